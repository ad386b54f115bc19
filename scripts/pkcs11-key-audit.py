#!/usr/bin/env python3
"""An independent look at a token's private keys (PyKCS11, not meterpki's cryptoki code).

For every private key on the token: CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_WRAP_WITH_TRUSTED, and,
for an extractable key, an attempt to wrap it under a fresh AES key that is *not* trusted (made
here as the user, so never CKA_TRUSTED): the token must refuse it. Prints one JSON object per
key and exits 1 when a key is not sensitive, or could leave the token without trusted wrapping.

usage: pkcs11-key-audit.py MODULE TOKEN_LABEL PIN_FILE
"""
import json
import sys

import PyKCS11
from PyKCS11.LowLevel import CKA_WRAP_WITH_TRUSTED, CKM_AES_KEY_WRAP_PAD

module, label, pin_file = sys.argv[1:4]
pin = open(pin_file).read().strip()
lib = PyKCS11.PyKCS11Lib()
lib.load(module)
slot = next(s for s in lib.getSlotList(tokenPresent=True)
            if lib.getTokenInfo(s).label.strip() == label)
session = lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
session.login(pin)
bad = False
rogue = session.generateKey([
    (PyKCS11.CKA_CLASS, PyKCS11.CKO_SECRET_KEY),
    (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_AES),
    (PyKCS11.CKA_VALUE_LEN, 32),
    (PyKCS11.CKA_TOKEN, False),
    (PyKCS11.CKA_WRAP, True),
    (PyKCS11.CKA_LABEL, "untrusted wrapping key"),
], PyKCS11.Mechanism(PyKCS11.CKM_AES_KEY_GEN))
for key in session.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY)]):
    lbl, sensitive, extractable, trusted_only = session.getAttributeValue(
        key, [PyKCS11.CKA_LABEL, PyKCS11.CKA_SENSITIVE, PyKCS11.CKA_EXTRACTABLE,
              CKA_WRAP_WITH_TRUSTED])
    out = {"label": lbl, "sensitive": bool(sensitive), "extractable": bool(extractable),
           "wrap_with_trusted": bool(trusted_only)}
    if extractable:
        try:
            session.wrapKey(rogue, key, PyKCS11.Mechanism(CKM_AES_KEY_WRAP_PAD))
            out["untrusted_wrap"] = "ALLOWED"
        except PyKCS11.PyKCS11Error as e:
            out["untrusted_wrap"] = "refused: " + str(e).split(" (")[0]
    ok = out["sensitive"] and (not out["extractable"] or (
        out["wrap_with_trusted"] and out["untrusted_wrap"] != "ALLOWED"))
    bad |= not ok
    print(json.dumps(out))
# Secret keys: the key-backup key may wrap (it is trusted) but never unwrap outside a
# ceremony: whoever unwraps chooses the new key's attributes, CKA_SENSITIVE false included.
for key in session.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_SECRET_KEY),
                                (PyKCS11.CKA_TOKEN, True)]):
    lbl, trusted, unwrap, modifiable = session.getAttributeValue(
        key, [PyKCS11.CKA_LABEL, PyKCS11.CKA_TRUSTED, PyKCS11.CKA_UNWRAP, PyKCS11.CKA_MODIFIABLE])
    out = {"secret_key": lbl, "trusted": bool(trusted), "unwrap": bool(unwrap),
           "modifiable": bool(modifiable)}
    bad |= out["unwrap"] or (out["trusted"] and out["modifiable"])
    print(json.dumps(out))
session.destroyObject(rogue)
session.logout()
sys.exit(1 if bad else 0)
