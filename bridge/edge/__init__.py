"""The HTTP edge: the signed POST, its HTTP/1.1 transport, TLS and proxies, the server's clock."""
