#!/usr/bin/env python3
"""Decodes a TAMP message meterpki wrote (a CMS ContentInfo of SignedData over a TAMPUpdate or a
TAMPApexUpdate) with pyasn1-modules' RFC 5652 and RFC 5934 modules: an independent ASN.1
decoder. Strict: the DER decoder, no trailing bytes, and every structure must encode back to
the exact input (canonical DER). Prints a JSON summary; exits 1 with the reason otherwise.

Usage: tamp-asn1-decode.py FILE
"""
import json
import sys

from pyasn1.codec.der import decoder, encoder
from pyasn1_modules import rfc5280, rfc5652, rfc5934


def strict(data, spec, what):
    value, rest = decoder.decode(data, asn1Spec=spec)
    if rest:
        raise ValueError(f"{what}: {len(rest)} bytes after the value")
    if encoder.encode(value) != bytes(data):
        raise ValueError(f"{what}: not canonical DER")
    return value


def main(path):
    data = open(path, "rb").read()
    ci = strict(data, rfc5652.ContentInfo(), "ContentInfo")
    if ci["contentType"] != rfc5652.id_signedData:
        raise ValueError(f"contentType {ci['contentType']}")
    sd = strict(bytes(ci["content"]), rfc5652.SignedData(), "SignedData")
    eci = sd["encapContentInfo"]
    ctype = eci["eContentType"]
    content = bytes(eci["eContent"])
    out = {"content_type": str(ctype), "signer_infos": len(sd["signerInfos"])}
    si = sd["signerInfos"][0]
    out["digest_algorithm"] = str(si["digestAlgorithm"]["algorithm"])
    out["signature_algorithm"] = str(si["signatureAlgorithm"]["algorithm"])
    out["sid_key_id"] = bytes(si["sid"]["subjectKeyIdentifier"]).hex()
    out["certificates"] = len(sd["certificates"]) if sd["certificates"].isValue else 0
    out["unsigned_attributes"] = []
    if si["unsignedAttrs"].isValue:
        for a in si["unsignedAttrs"]:
            entry = {"type": str(a["attrType"])}
            if a["attrType"] == rfc5934.id_aa_TAMP_contingencyPublicKeyDecryptKey:
                key = strict(bytes(a["attrValues"][0]), rfc5934.PlaintextSymmetricKey(),
                             "ContingencyPublicKeyDecryptKey")
                entry["decrypt_key_bytes"] = len(bytes(key))
            out["unsigned_attributes"].append(entry)
    if ctype == rfc5934.id_ct_TAMP_apexUpdate:
        u = strict(content, rfc5934.TAMPApexUpdate(), "TAMPApexUpdate")
        target = u["msgRef"]["target"]
        out["kind"] = "apex"
        out["seq"] = int(u["msgRef"]["seqNum"])
        out["target"] = target.getName()
        out["clear_trust_anchors"] = bool(u["clearTrustAnchors"])
        out["apex_seq_number"] = int(u["seqNumber"]) if u["seqNumber"].isValue else None
        cert = u["apexTA"]["certificate"]
        out["apex_subject_der"] = encoder.encode(cert["tbsCertificate"]["subject"]).hex()
        for ext in cert["tbsCertificate"]["extensions"]:
            if ext["extnID"] == rfc5934.id_pe_wrappedApexContinKey:
                w = strict(bytes(ext["extnValue"]), rfc5934.ApexContingencyKey(),
                           "WrappedApexContingencyKey")
                out["apex_wrapped_contingency_key"] = {
                    "wrap_algorithm": str(w["wrapAlgorithm"]["algorithm"]),
                    "bytes": len(bytes(w["wrappedContinPubKey"])),
                }
    elif ctype == rfc5934.id_ct_TAMP_update:
        u = strict(content, rfc5934.TAMPUpdate(), "TAMPUpdate")
        out["kind"] = "update"
        out["seq"] = int(u["msgRef"]["seqNum"])
        out["updates"] = [x.getName() for x in u["updates"]]
    else:
        raise ValueError(f"eContentType {ctype}")
    print(json.dumps(out))


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except Exception as e:  # every failure is a refusal with its reason
        print(f"{sys.argv[1]}: {e}", file=sys.stderr)
        sys.exit(1)
