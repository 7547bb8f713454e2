//! etcd v3 through its JSON gateway (`/v3/`), over a blocking HTTP client.
