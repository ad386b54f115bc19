//! Scratch homes with other HSM set-ups: the fault injector in place of SoftHSM, and a second
//! token holding the online keys.

use std::process::Command;

use crate::{softhsm_module, Scratch};

impl Scratch {
    /// Loads the PKCS#11 fault injector (`pkcs11-faults`, built beside the CLI) in place of
    /// SoftHSM in `home`'s configuration; returns SoftHSM's path, for `METERPKI_FAULTS_MODULE`.
    pub fn use_fault_module(&self, home: &str) -> String {
        let shim = self.exe.with_file_name("libmeterpki_pkcs11_faults.so");
        assert!(shim.exists(), "{} not built", shim.display());
        let real = softhsm_module();
        let toml_path = self.path(&format!("{home}/meterpki.toml"));
        let toml = std::fs::read_to_string(&toml_path).unwrap();
        assert!(toml.contains(&real), "{home} does not load {real}");
        std::fs::write(&toml_path, toml.replace(&real, &shim.display().to_string())).unwrap();
        real
    }

    /// A copy of `from`'s online token (SoftHSM, label `meterpki-online`) in `to`'s token
    /// directory, labelled `label`: another token holding the same keys, as replication makes
    /// one, made here by copying SoftHSM's files (the token's label and serial are in its
    /// `token.object`; the serial is the last 16 hex digits of the directory's name, and must
    /// differ, or SoftHSM refuses to start). `from` = `to`: a replica; another home: a token
    /// holding other keys under the same labels.
    pub fn copy_online_token(&self, from: &str, to: &str, label: &str) {
        assert!(label.len() <= 32);
        let tokens = |h: &str| self.path(&format!("{h}/softhsm/tokens"));
        let src = std::fs::read_dir(tokens(from))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|d| {
                std::fs::read(d.join("token.object")).is_ok_and(|b| {
                    b.windows(32)
                        .any(|w| w == format!("{:<32}", "meterpki-online").as_bytes())
                })
            })
            .expect("the online token's directory");
        let name = src.file_name().unwrap().to_string_lossy().to_string();
        let serial = name.replace('-', "")[16..].to_string();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let new_serial = format!("{:016x}", (nanos as u64) ^ 0x5a5a_0000_0000_0000);
        let new_name = format!("{}-{}-{}", &name[..18], &new_serial[..4], &new_serial[4..]);
        let dst = tokens(to).join(&new_name);
        let copied = Command::new("cp")
            .args(["-a", &src.display().to_string(), &dst.display().to_string()])
            .status()
            .unwrap();
        assert!(copied.success());
        let object = dst.join("token.object");
        let mut bytes = std::fs::read(&object).unwrap();
        let mut replace = |old: &[u8], new: &[u8]| {
            let at = bytes
                .windows(old.len())
                .position(|w| w == old)
                .expect("field in token.object");
            bytes[at..at + old.len()].copy_from_slice(new);
        };
        replace(
            format!("{:<32}", "meterpki-online").as_bytes(),
            format!("{label:<32}").as_bytes(),
        );
        replace(serial.as_bytes(), new_serial.as_bytes());
        std::fs::write(&object, bytes).unwrap();
    }
}
