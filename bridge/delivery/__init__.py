"""The delivery pipeline: stream entry -> job -> signed POST -> ack, retry or dead letter."""
