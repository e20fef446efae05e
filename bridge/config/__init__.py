"""Settings: the typed configuration from config/bridge.toml and the environment."""
