"""docs/http.md's curl examples, run with the real curl against a real daemon, in the doc's order,
each checked for the status its `# →` comment states; and every endpoint has one."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

from http_support import http_daemon, http_session
from support import SiotProcess

from siot.cmd.debian_packages import require

DOC = Path(__file__).parent.parent / "docs" / "http.md"
BLOCK = re.compile(r"```sh\n(.*?)```", re.S)
STATUS = re.compile(r"^#\s*→\s*(\d{3})", re.M)
CURL_TIMED_OUT = 28  # the stream examples end by --max-time
# What the examples must show between them: every endpoint of DESIGN §9 but /metrics and /.
COVERED = (
    '"$SIOT/healthz"',
    '-X POST "$SIOT/v1/auth"',
    '"$SIOT/v1/nodes/$ROOT"',
    "/children",
    '-X POST "$SIOT/v1/nodes"',
    '-X DELETE "$SIOT/v1/nodes/',
    "/move",
    "/points",
    "/history?",
    "&every=",
    "/v1/stream",
    "Last-Event-ID",
    "/v1/openapi.json",
    "/credentials",
)


def examples() -> list[tuple[str, int]]:
    found = []
    for block in BLOCK.findall(DOC.read_text()):
        status = STATUS.search(block)
        assert status, f"an example in {DOC} has no '# → <status>' line:\n{block}"
        found.append((block, int(status.group(1))))
    return found


def test_every_endpoint_has_an_example() -> None:
    text = "\n".join(block for block, _ in examples())
    assert [item for item in COVERED if item not in text] == []


def test_the_curl_examples_run(tmp_path: Path) -> None:
    curl = require("curl")
    with http_daemon(tmp_path / "data") as proc:
        token, root = asyncio.run(login(proc))
        body = tmp_path / "body"
        env = {"SIOT": f"http://127.0.0.1:{proc.http_port}", "TOKEN": token, "ROOT": root, "BODY": str(body)}
        # Each example's own curl, its answer to a file and its status printed instead.
        wrapper = f'curl() {{ command {curl} -sS -o "$BODY" -w "%{{http_code}}\\n" "$@"; }}\n'
        for script, status in examples():
            result = subprocess.run(
                ["bash", "-c", wrapper + script], env=env, capture_output=True, text=True, timeout=60
            )
            answer = body.read_text() if body.exists() else ""
            where = f"{script}\nstdout: {result.stdout}\nstderr: {result.stderr}\nbody: {answer[:2000]}"
            assert result.returncode in (0, CURL_TIMED_OUT), where
            assert result.stdout.split() == [str(status)], where


async def login(proc: SiotProcess) -> tuple[str, str]:
    async with http_session(proc) as http:
        admin = await http.login()
        return admin.token or "", await admin.root_id()
