//! `cert-sn`: the certificate SN (or a bundle's root SN) the worker will send,
//! so an operator can compare it with what the Alipay console shows.

use std::path::Path;
use std::process::ExitCode;

use crate::upstream::cert;

pub(super) const CERT_SN_HELP: &str = "\
Exit codes:
  0   the SN was printed on stdout
  1   error: unreadable file, not a PEM certificate, a private key, or (with
      --root) a bundle with no RSA-signed root; the message says which
  64  usage error

Environment:
  RUST_LOG                           log filter (the configuration is loaded as for every command)
  ZHIMA__<SECTION>__<KEY>            any configuration key (not used by this command)

Example:
  zhima-worker cert-sn appCertPublicKey_2021000000000001.crt     # app_cert_sn
  zhima-worker cert-sn --root alipayRootCert.crt                 # alipay_root_cert_sn";

/// Prints the SN of the first certificate of `file` (the leaf, when the file
/// holds a chain) or, with `root`, the root SN of the bundle.
pub(super) fn cert_sn(file: &Path, root: bool) -> anyhow::Result<ExitCode> {
    let certificates = cert::read_pem_file(file)?;
    let sn = if root {
        cert::root_sn(&certificates)
            .map_err(|error| anyhow::anyhow!("{}: {error}", file.display()))?
    } else {
        // read_pem_file never returns an empty list.
        let Some(first) = certificates.first() else {
            anyhow::bail!("{}: no certificate", file.display());
        };
        first.sn().to_owned()
    };
    println!("{sn}");
    Ok(ExitCode::SUCCESS)
}
