//! A PKCS#11 module for fault-injection tests (issue 7): loaded by meterpki in place of SoftHSM
//! (`module = ".../libmeterpki_pkcs11_faults.so"` in `meterpki.toml`), it loads the real module
//! named by `METERPKI_FAULTS_MODULE` (default: SoftHSM's), hands out the real function list with
//! `C_Sign` replaced, and on every signature reads the control file named by
//! `METERPKI_FAULTS_FILE`:
//!
//! ```text
//! (missing or empty)   forward to the real module
//! sign=fail:0x30       return that CKR code (0x30 = CKR_DEVICE_ERROR) without signing
//! sign=hang            block until the file says something else, then forward
//! sign=corrupt         forward, then flip a bit of the signature the module returned
//! sign=rate:N          each token signs at most N signatures a second: their starts are
//!                      spaced 1/N apart per token (slot), as a device of that capacity would
//!                      serialise them; several tokens each get N (a stand-in for a network HSM)
//! sign=delay:US        every signature waits US microseconds first (a network round trip)
//! key=LABEL            (another line) only signatures by the key labelled LABEL are affected
//! token=LABEL          (another line) only signatures on the token labelled LABEL are affected
//! ```
//!
//! `rate` and `delay` combine with each other and with one of `fail`, `hang`, `corrupt`.
//!
//! With `METERPKI_FAULTS_LOG` set, every `C_OpenSession` appends `open <token label>` to that
//! file: a test can tell which tokens a process touched (the server must never open the root
//! token).
//!
//! Everything else goes straight to the real module, so the PKCS#11 boundary meterpki sees is
//! the real one: sessions, logins, key handles and mechanisms are SoftHSM's own.
//!
//! This crate is the one place in the workspace with `unsafe` code: a PKCS#11 module *is* a set
//! of C-ABI functions taking raw pointers, and no crate writes one for us. The unsafe surface is
//! `C_GetFunctionList` (one pointer written) and the `C_Sign` wrapper (pointers passed through to
//! the real module unchanged, one byte of its output flipped on command).
#![allow(non_snake_case)]

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use cryptoki_sys::{
    CKA_LABEL, CKR_OK, CK_ATTRIBUTE, CK_BYTE, CK_FLAGS, CK_FUNCTION_LIST, CK_MECHANISM, CK_NOTIFY,
    CK_OBJECT_HANDLE, CK_RV, CK_SESSION_HANDLE, CK_SLOT_ID, CK_TOKEN_INFO, CK_ULONG,
};

const DEFAULT_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

struct Real {
    _lib: libloading::Library,
    list: CK_FUNCTION_LIST,
}

// The function list is a table of C function pointers into a loaded library, read-only after
// loading: sharing it between threads is what PKCS#11 modules are built for.
unsafe impl Send for Real {}
unsafe impl Sync for Real {}

struct Ours(CK_FUNCTION_LIST);
unsafe impl Send for Ours {}
unsafe impl Sync for Ours {}

static REAL: OnceLock<Result<Real, String>> = OnceLock::new();
static OURS: OnceLock<Ours> = OnceLock::new();
/// The key each session's signing operation uses, from `C_SignInit`.
static SIGN_KEYS: OnceLock<Mutex<HashMap<CK_SESSION_HANDLE, CK_OBJECT_HANDLE>>> = OnceLock::new();

fn sign_keys() -> std::sync::MutexGuard<'static, HashMap<CK_SESSION_HANDLE, CK_OBJECT_HANDLE>> {
    SIGN_KEYS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn real() -> Result<&'static Real, &'static str> {
    REAL.get_or_init(|| {
        let path =
            std::env::var("METERPKI_FAULTS_MODULE").unwrap_or_else(|_| DEFAULT_MODULE.into());
        // SAFETY: loading a PKCS#11 module runs its initialisers; that is what the caller
        // asked for by loading us.
        let lib = unsafe { libloading::Library::new(&path) }.map_err(|e| format!("{path}: {e}"))?;
        let get: libloading::Symbol<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
            unsafe { lib.get(b"C_GetFunctionList\0") }.map_err(|e| format!("{path}: {e}"))?;
        let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
        // SAFETY: C_GetFunctionList writes one pointer to a table that lives as long as the
        // library, which `Real` keeps loaded.
        let rv = unsafe { get(&mut list) };
        if rv != CKR_OK || list.is_null() {
            return Err(format!("{path}: C_GetFunctionList returned {rv:#x}"));
        }
        let list = unsafe { *list };
        Ok(Real { _lib: lib, list })
    })
    .as_ref()
    .map_err(|e| e.as_str())
}

/// What the control file asks of the next signature.
#[derive(Debug, PartialEq, Eq)]
enum Fault {
    None,
    Fail(CK_RV),
    Hang,
    Corrupt,
}

/// The control file, read.
#[derive(Debug, PartialEq)]
struct Control {
    fault: Fault,
    /// Signatures a second per token.
    rate: Option<f64>,
    /// Wait before every signature.
    delay: Option<Duration>,
    key: Option<String>,
    token: Option<String>,
}

impl Control {
    fn none() -> Control {
        Control {
            fault: Fault::None,
            rate: None,
            delay: None,
            key: None,
            token: None,
        }
    }

    fn is_none(&self) -> bool {
        self.fault == Fault::None && self.rate.is_none() && self.delay.is_none()
    }
}

/// What the control file asks of a signature in `session`: nothing when it names another key
/// or another token.
fn control(real: &Real, session: CK_SESSION_HANDLE) -> Control {
    let Ok(path) = std::env::var("METERPKI_FAULTS_FILE") else {
        return Control::none();
    };
    let c = parse(&std::fs::read_to_string(path).unwrap_or_default());
    if c.is_none() {
        return c;
    }
    if let Some(want) = &c.key {
        if label_of_sign_key(real, session).as_deref() != Some(want.as_str()) {
            return Control::none();
        }
    }
    if let Some(want) = &c.token {
        if slot_of(real, session)
            .and_then(|s| token_label(real, s))
            .as_deref()
            != Some(want.as_str())
        {
            return Control::none();
        }
    }
    c
}

/// The slot a session is on, asked of the real module.
fn slot_of(real: &Real, session: CK_SESSION_HANDLE) -> Option<CK_SLOT_ID> {
    let info = real.list.C_GetSessionInfo?;
    // SAFETY: CK_SESSION_INFO is plain data; the module fills it.
    let mut si: cryptoki_sys::CK_SESSION_INFO = unsafe { std::mem::zeroed() };
    (unsafe { info(session, &mut si) } == CKR_OK).then_some(si.slotID)
}

/// A slot's token label, asked of the real module.
fn token_label(real: &Real, slot: CK_SLOT_ID) -> Option<String> {
    let info = real.list.C_GetTokenInfo?;
    // SAFETY: CK_TOKEN_INFO is plain data; the module fills it.
    let mut ti: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
    (unsafe { info(slot, &mut ti) } == CKR_OK)
        .then(|| String::from_utf8_lossy(&ti.label).trim_end().to_string())
}

/// When each token (slot) may start its next signature under `sign=rate`.
static NEXT_START: OnceLock<Mutex<HashMap<CK_SLOT_ID, Instant>>> = OnceLock::new();

/// Waits for the turn of a signature on `session`'s token at `rate` a second: starts are
/// spaced 1/rate apart per token whatever the number of threads, and a late sleeper does not
/// push the schedule (it is kept in start times, not in the sleeps).
fn pace(real: &Real, session: CK_SESSION_HANDLE, rate: f64) {
    let slot = slot_of(real, session).unwrap_or(CK_SLOT_ID::MAX);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = {
        let mut next = NEXT_START
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let at = next.entry(slot).or_insert(now);
        let start = (*at).max(now);
        *at = start + interval;
        start
    };
    let now = Instant::now();
    if start > now {
        std::thread::sleep(start - now);
    }
}

/// The CKA_LABEL of the key `C_SignInit` named for this session, asked of the real module.
fn label_of_sign_key(real: &Real, session: CK_SESSION_HANDLE) -> Option<String> {
    let key = *sign_keys().get(&session)?;
    let get = real.list.C_GetAttributeValue?;
    let mut buf = [0u8; 256];
    let mut attr = CK_ATTRIBUTE {
        type_: CKA_LABEL,
        pValue: buf.as_mut_ptr().cast(),
        ulValueLen: buf.len() as CK_ULONG,
    };
    // SAFETY: one attribute with a 256-byte buffer we own; the module writes at most that.
    let rv = unsafe { get(session, key, &mut attr, 1) };
    if rv != CKR_OK || attr.ulValueLen as usize > buf.len() {
        return None;
    }
    Some(String::from_utf8_lossy(&buf[..attr.ulValueLen as usize]).into_owned())
}

unsafe extern "C" fn C_SignInit(
    session: CK_SESSION_HANDLE,
    mechanism: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    let Ok(real) = real() else {
        return cryptoki_sys::CKR_GENERAL_ERROR;
    };
    let Some(init) = real.list.C_SignInit else {
        return cryptoki_sys::CKR_FUNCTION_NOT_SUPPORTED;
    };
    // SAFETY: forwarded unchanged.
    let rv = unsafe { init(session, mechanism, key) };
    if rv == CKR_OK {
        sign_keys().insert(session, key);
    }
    rv
}

fn parse(text: &str) -> Control {
    let mut c = Control::none();
    for line in text.lines().map(str::trim) {
        if let Some(label) = line.strip_prefix("key=") {
            c.key = Some(label.to_string());
        } else if let Some(label) = line.strip_prefix("token=") {
            c.token = Some(label.to_string());
        } else if let Some(v) = line.strip_prefix("sign=") {
            if let Some(n) = v.strip_prefix("rate:") {
                c.rate = n.parse::<f64>().ok().filter(|r| r.is_finite() && *r > 0.0);
            } else if let Some(us) = v.strip_prefix("delay:") {
                c.delay = us.parse::<u64>().ok().map(Duration::from_micros);
            } else if c.fault == Fault::None {
                c.fault = match v {
                    "hang" => Fault::Hang,
                    "corrupt" => Fault::Corrupt,
                    v => match v.strip_prefix("fail:") {
                        Some(code) => CK_RV::from_str_radix(code.trim_start_matches("0x"), 16)
                            .map(Fault::Fail)
                            .unwrap_or(Fault::None),
                        None => Fault::None,
                    },
                };
            }
        }
    }
    c
}

unsafe extern "C" fn C_Sign(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    data_len: CK_ULONG,
    signature: *mut CK_BYTE,
    signature_len: *mut CK_ULONG,
) -> CK_RV {
    let Ok(real) = real() else {
        return cryptoki_sys::CKR_GENERAL_ERROR;
    };
    let Some(sign) = real.list.C_Sign else {
        return cryptoki_sys::CKR_FUNCTION_NOT_SUPPORTED;
    };
    let mut c = control(real, session);
    while c.fault == Fault::Hang {
        std::thread::sleep(Duration::from_millis(20));
        c = control(real, session);
    }
    // A call with no output buffer only asks the signature's length (cryptoki makes one before
    // every signature): it signs nothing, so it takes no turn and no delay.
    if !signature.is_null() {
        if let Some(rate) = c.rate {
            pace(real, session, rate);
        }
        if let Some(delay) = c.delay {
            std::thread::sleep(delay);
        }
    }
    let f = c.fault;
    if let Fault::Fail(rv) = f {
        return rv;
    }
    // SAFETY: the caller's pointers go to the real module unchanged, as if we were not here.
    let rv = unsafe { sign(session, data, data_len, signature, signature_len) };
    if f == Fault::Corrupt && rv == CKR_OK && !signature.is_null() && !signature_len.is_null() {
        // SAFETY: on success the module wrote `*signature_len` bytes at `signature`.
        let len = unsafe { *signature_len } as usize;
        if len > 0 {
            unsafe { *signature.add(len / 2) ^= 0x01 };
        }
    }
    rv
}

unsafe extern "C" fn C_OpenSession(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    application: *mut std::os::raw::c_void,
    notify: CK_NOTIFY,
    session: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    let Ok(real) = real() else {
        return cryptoki_sys::CKR_GENERAL_ERROR;
    };
    let Some(open) = real.list.C_OpenSession else {
        return cryptoki_sys::CKR_FUNCTION_NOT_SUPPORTED;
    };
    if let (Ok(log), Some(info)) = (
        std::env::var("METERPKI_FAULTS_LOG"),
        real.list.C_GetTokenInfo,
    ) {
        // SAFETY: CK_TOKEN_INFO is plain data; the module fills it.
        let mut ti: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
        if unsafe { info(slot, &mut ti) } == CKR_OK {
            let label = String::from_utf8_lossy(&ti.label).trim_end().to_string();
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
            {
                let _ = writeln!(f, "open {label}");
            }
        }
    }
    // SAFETY: forwarded unchanged.
    unsafe { open(slot, flags, application, notify, session) }
}

/// The module's entry point: the real module's function list with `C_Sign` replaced.
///
/// # Safety
/// `list` must be a valid pointer to write one pointer to, as PKCS#11 requires.
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(list: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    if list.is_null() {
        return cryptoki_sys::CKR_ARGUMENTS_BAD;
    }
    let Ok(real) = real() else {
        return cryptoki_sys::CKR_GENERAL_ERROR;
    };
    let ours = OURS.get_or_init(|| {
        let mut l = real.list;
        l.C_Sign = Some(C_Sign);
        l.C_SignInit = Some(C_SignInit);
        l.C_OpenSession = Some(C_OpenSession);
        Ours(l)
    });
    // SAFETY: `list` is non-null; callers only read the table (PKCS#11 declares it const in
    // spirit; the C type is not), which lives for the life of the process.
    unsafe { *list = &ours.0 as *const CK_FUNCTION_LIST as *mut CK_FUNCTION_LIST };
    CKR_OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_file_grammar() {
        let fault = |t: &str| parse(t).fault;
        assert_eq!(fault(""), Fault::None);
        assert!(parse("").is_none());
        assert_eq!(fault("sign=hang\n"), Fault::Hang);
        assert_eq!(fault("sign=corrupt"), Fault::Corrupt);
        assert_eq!(fault("sign=fail:0x30"), Fault::Fail(0x30));
        assert_eq!(fault("# comment\nsign=fail:e0"), Fault::Fail(0xe0));
        assert_eq!(fault("sign=nonsense"), Fault::None);
        let c = parse("sign=rate:1500\nsign=delay:250\nsign=corrupt\ntoken=b\nkey=k");
        assert_eq!(c.rate, Some(1500.0));
        assert_eq!(c.delay, Some(Duration::from_micros(250)));
        assert_eq!(c.fault, Fault::Corrupt);
        assert_eq!(
            (c.token.as_deref(), c.key.as_deref()),
            (Some("b"), Some("k"))
        );
        assert!(!c.is_none());
        // A rate that is not a positive number is no rate.
        for bad in [
            "sign=rate:0",
            "sign=rate:-5",
            "sign=rate:x",
            "sign=rate:inf",
        ] {
            assert_eq!(parse(bad).rate, None, "{bad}");
        }
    }
}
