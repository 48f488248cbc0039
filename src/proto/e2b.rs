//! Facts about E2B compatibility shared by the E2B front-end and the in-guest envd.

/// The envd version every sandbox reports (`envdVersion`). The SDKs pick behaviour by it
/// (see /work/shared/E2B.md §2.8): at 0.5.7 they send no user unless asked (envd applies its
/// default user), may close stdin, and upload with `application/octet-stream` (gzip too); they
/// do not send file metadata headers (0.6.2) nor ask watches for entries (0.6.3).
pub const ENVD_VERSION: &str = "0.5.7";

/// The TCP port envd listens on inside every sandbox.
pub const ENVD_PORT: u16 = 49983;
