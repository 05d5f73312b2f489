//! SSH keypairs in the original's formats (`generate_ssh_keypair` of 21.03): an RSA-2048
//! key, the private half as a traditional PKCS#1 PEM (`-----BEGIN RSA PRIVATE KEY-----`),
//! the public half in OpenSSH's `ssh-rsa AAAA...` line.

use data_encoding::BASE64;
use rsa::pkcs1::{EncodeRsaPrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;

/// `(public, private)`. CPU-bound (tens of milliseconds optimised): call it off the async
/// threads.
pub fn generate_rsa_keypair() -> anyhow::Result<(String, String)> {
    let mut rng = rand::rngs::OsRng;
    let key = RsaPrivateKey::new(&mut rng, 2048)?;
    let private = key.to_pkcs1_pem(LineEnding::LF)?.to_string();
    let public = openssh_public(&key.e().to_bytes_be(), &key.n().to_bytes_be());
    Ok((public, private))
}

/// RFC 4253 §6.6: `string "ssh-rsa"`, `mpint e`, `mpint n`, base64 after the key type.
fn openssh_public(e: &[u8], n: &[u8]) -> String {
    let mut blob = Vec::with_capacity(n.len() + 32);
    put_string(&mut blob, b"ssh-rsa");
    put_mpint(&mut blob, e);
    put_mpint(&mut blob, n);
    format!("ssh-rsa {}", BASE64.encode(&blob))
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

/// A positive multi-precision integer: minimal big-endian bytes, with a leading zero when
/// the top bit is set (so it is not read as negative).
fn put_mpint(out: &mut Vec<u8>, bytes: &[u8]) {
    let trimmed: &[u8] = {
        let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        &bytes[first..]
    };
    if trimmed.first().is_some_and(|b| b & 0x80 != 0) {
        out.extend_from_slice(&((trimmed.len() + 1) as u32).to_be_bytes());
        out.push(0);
    } else {
        out.extend_from_slice(&(trimmed.len() as u32).to_be_bytes());
    }
    out.extend_from_slice(trimmed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_keys_in_openssh_and_pem_formats() {
        let (public, private) = generate_rsa_keypair().unwrap();
        assert!(public.starts_with("ssh-rsa AAAAB3NzaC1yc2E"), "{public}");
        assert!(private.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        // Fits the original's columns (VARCHAR(750) / VARCHAR(2000)).
        assert!(public.len() <= 750 && private.len() <= 2000);
        let blob = BASE64
            .decode(public.split(' ').nth(1).unwrap().as_bytes())
            .unwrap();
        // type(4+7) + e (4+3 for 65537) + n (4+257 with the sign byte)
        assert_eq!(blob.len(), 11 + 7 + 261);
    }
}
