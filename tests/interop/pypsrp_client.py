"""Drives psbroker's wire simulator with pypsrp, an independent PSRP client, and prints one JSON
document with what it saw. Run by tests/pypsrp_interop.rs; usable by hand too:

    python pypsrp_client.py --port 5985 --tenant contoso.onmicrosoft.com \
        --user alice@partner.onmicrosoft.com --password pa [--auth ntlm --encryption always]

Exit status 0 whenever the JSON was printed; the Rust test asserts on its content.
"""

import argparse
import json
import sys
import traceback
import xml.etree.ElementTree as ET

from pypsrp.exceptions import WSManFaultError
from pypsrp.powershell import PowerShell, RunspacePool
from pypsrp.wsman import NAMESPACES, WSMan

SHELL_URI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"


def connect(args, **kwargs):
    if args.auth == "certificate":
        kwargs.update(certificate_pem=args.cert_pem, certificate_key_pem=args.key_pem)
    if args.auth in ("kerberos", "negotiate"):
        # The service principal is HTTP/<host>, as IIS-hosted endpoints (Exchange) register it.
        kwargs.update(negotiate_service="HTTP")
    return WSMan(
        args.host,
        port=args.port,
        path="powershell-liveid?DelegatedOrg=%s" % args.tenant,
        ssl=args.ca_file is not None,
        cert_validation=args.ca_file or True,
        auth=args.auth,
        encryption=args.encryption,
        username=args.user,
        password=args.password,
        operation_timeout=5,
        read_timeout=15,
        **kwargs,
    )


def prop(obj, name):
    """A property of a deserialized object, adapted (Props) or extended (MS)."""
    for props in (getattr(obj, "adapted_properties", {}), getattr(obj, "extended_properties", {})):
        if name in props:
            value = props[name]
            return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
    return None


def error_info(err):
    exception = getattr(err, "exception", None)
    message = None
    if exception is not None:
        message = prop(exception, "Message") or getattr(exception, "message", None)
    return {
        "message": message or str(err),
        "fqeid": getattr(err, "fq_error", None),
        "category": getattr(err, "category", None),
        "category_reason": getattr(err, "reason", None),
    }


def open_pool(wsman, name=None):
    pool = RunspacePool(wsman, configuration_name="Microsoft.Exchange")
    if name is not None:
        pool.shell.name = name
    pool.open()
    return pool


def enumerate_shells(wsman):
    body = ET.Element("{%s}Enumerate" % NAMESPACES["wsen"])
    ET.SubElement(body, "{%s}OptimizeEnumeration" % NAMESPACES["wsman"])
    ET.SubElement(body, "{%s}MaxElements" % NAMESPACES["wsman"]).text = "32000"
    response = wsman.enumerate(SHELL_URI, body)
    shells = []
    for shell in response.findall("wsen:EnumerateResponse/wsman:Items/rsp:Shell", NAMESPACES):
        shells.append(
            {
                "id": shell.findtext("rsp:ShellId", namespaces=NAMESPACES),
                "name": shell.findtext("rsp:Name", namespaces=NAMESPACES),
                "owner": shell.findtext("rsp:Owner", namespaces=NAMESPACES),
                "resource_uri": shell.findtext("rsp:ResourceUri", namespaces=NAMESPACES),
                "state": shell.findtext("rsp:State", namespaces=NAMESPACES),
            }
        )
    return shells


def run(args):
    out = {}
    wsman = connect(args)
    pools = []
    try:
        first = open_pool(wsman, name="interop-1")
        pools.append(first)
        out["pool_state"] = int(first.state)

        ps = PowerShell(first)
        ps.add_cmdlet("Get-Mailbox").add_parameter("ResultSize", 3)
        objects = ps.invoke()
        out["mailboxes"] = [
            {
                "Name": prop(o, "Name"),
                "PrimarySmtpAddress": prop(o, "PrimarySmtpAddress"),
                "types": list(getattr(o, "types", []) or []),
            }
            for o in objects
        ]
        out["mailbox_state"] = int(ps.state)
        out["mailbox_had_errors"] = bool(ps.had_errors)
        out["mailbox_warnings"] = [str(w) for w in ps.streams.warning]

        bad = PowerShell(first)
        bad.add_cmdlet("Get-NoSuchThing")
        bad.invoke()
        out["bad"] = {
            "had_errors": bool(bad.had_errors),
            "state": int(bad.state),
            "errors": [error_info(e) for e in bad.streams.error],
        }

        for i in (2, 3):
            pools.append(open_pool(wsman, name="interop-%d" % i))
        out["enumerated"] = enumerate_shells(wsman)

        try:
            pools.append(open_pool(wsman, name="interop-4"))
            out["quota"] = {"refused": False}
        except WSManFaultError as e:
            out["quota"] = {"refused": True, "code": e.code, "message": e.reason}
    finally:
        for pool in pools:
            try:
                pool.close()
            except Exception as e:  # keep closing the others; report it
                out.setdefault("close_errors", []).append(repr(e))
    out["after_close"] = enumerate_shells(wsman)

    # A small envelope forces the server to spread the output over several Receives.
    small = connect(args, max_envelope_size=10240)
    with RunspacePool(small, configuration_name="Microsoft.Exchange") as pool:
        ps = PowerShell(pool)
        ps.add_cmdlet("Get-Mailbox").add_parameter("ResultSize", "Unlimited")
        objects = ps.invoke()
        out["large"] = {
            "count": len(objects),
            "distinct": len({prop(o, "PrimarySmtpAddress") for o in objects}),
            "had_errors": bool(ps.had_errors),
        }
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--auth", default="basic", help="basic, ntlm, negotiate or kerberos")
    parser.add_argument("--encryption", default="never", help="never, auto or always (WinRM message encryption)")
    parser.add_argument("--ca-file", default=None, help="HTTPS, trusting this CA (PEM)")
    parser.add_argument("--cert-pem", default=None, help="certificate auth: the client certificate (PEM)")
    parser.add_argument("--key-pem", default=None, help="certificate auth: its private key (PEM)")
    args = parser.parse_args()
    try:
        out = run(args)
    except Exception as e:
        out = {"exception": repr(e), "traceback": traceback.format_exc()}
    json.dump(out, sys.stdout, indent=1, default=str)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
