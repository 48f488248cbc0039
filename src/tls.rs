//! HTTP clients for every role, with the machine's CA certificates, or, on a machine that has none
//! (a bare host without `ca-certificates`, an empty chroot: the static binary runs there too), the
//! Mozilla roots built into the binary, so that plain `http://` works everywhere and `https://`
//! wherever the peer's certificate is publicly trusted.

/// Builds the client `configure` describes. Where the system's trust store is empty (reqwest then
/// refuses to build), it is built again trusting the bundled roots only.
pub fn http_client(
    configure: impl Fn(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
) -> reqwest::Result<reqwest::Client> {
    match configure(reqwest::Client::builder()).build() {
        Ok(c) => Ok(c),
        Err(first) => {
            let bundled = webpki_root_certs::TLS_SERVER_ROOT_CERTS
                .iter()
                .filter_map(|c| reqwest::Certificate::from_der(c).ok());
            configure(reqwest::Client::builder())
                .tls_certs_only(bundled)
                .build()
                .map_err(|_| first)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bundled_roots_parse() {
        let n = webpki_root_certs::TLS_SERVER_ROOT_CERTS
            .iter()
            .filter(|c| reqwest::Certificate::from_der(c).is_ok())
            .count();
        assert!(n > 100, "{n} bundled roots");
        let client = super::http_client(|b| b.tls_certs_only([]));
        assert!(client.is_ok());
    }
}
