"""Shared by the sluice serve tests: the tiny random-weight model with the real DeepSeek-V3
tokenizer, and a `sluice serve` process on a free loopback port that stops with SIGTERM.

The tests use the official `openai` client, which scripts/install-deps.sh installs into .venv
(Debian's Python is externally managed); importing this module re-runs the test under that
interpreter when the current one lacks the client.
"""
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
VENV_PYTHON = pathlib.Path(os.environ.get("SLUICE_VENV", ROOT / ".venv")) / "bin" / "python3"

try:
    import openai  # noqa: F401
except ImportError:
    if VENV_PYTHON.exists() and pathlib.Path(sys.executable) != VENV_PYTHON:
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), *sys.argv])
    sys.exit(f"the openai client is not installed (looked in {VENV_PYTHON}): run scripts/install-deps.sh")

SLUICE = os.environ.get("SLUICE_BIN") or str(ROOT / "build" / "engine" / "sluice")
SHARED = pathlib.Path(os.environ.get("SLUICE_SHARED", ROOT.parent / "shared"))
TOKENIZER = SHARED / "models" / "deepseek-v3-tokenizer"

_scratch = tempfile.TemporaryDirectory(prefix="sluice_serve_test_")


def tiny_model():
    """sluice synth's tiny preset (2 layers, 8 experts, F32) with the real tokenizer and chat template."""
    path = pathlib.Path(_scratch.name) / "tiny"
    if not (path / "config.json").exists():
        subprocess.run([SLUICE, "synth", "-o", str(path), "--preset", "tiny", "--dtype", "f32", "--seed", "7",
                        "--tokenizer", str(TOKENIZER)], check=True, capture_output=True)
    return str(path)


def rss_bytes(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Server:
    """`sluice serve` on 127.0.0.1, any free port; waits until /health says ok."""

    def __init__(self, *args, model=None, ready=True, threads=1, env=None):
        self.model = model or tiny_model()
        cmd = [SLUICE, "serve", "-m", self.model, "--port", "0", "-t", str(threads), *map(str, args)]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        self.log = []
        self.port = None
        deadline = time.time() + 60
        while self.port is None:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError(f"sluice serve exited: {self.proc.wait()}: {''.join(self.log)}")
            self.log.append(line)
            m = re.search(r"listening on http://[^:]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
            if time.time() > deadline:
                raise RuntimeError("sluice serve did not start listening")
        self._drain = threading.Thread(target=self._read_log, daemon=True)
        self._drain.start()
        self.url = f"http://127.0.0.1:{self.port}"
        if ready:
            self.wait_ready()

    def _read_log(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def wait_ready(self, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"sluice serve exited {self.proc.returncode}: {''.join(self.log)}")
            time.sleep(0.1)
        raise RuntimeError("sluice serve never became ready")

    def client(self, **kw):
        import openai
        kw.setdefault("api_key", "unused")
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 120)
        return openai.OpenAI(base_url=self.url + "/v1", **kw)

    def metrics(self, headers=None):
        """GET /metrics as {name{labels}: value}."""
        req = urllib.request.Request(self.url + "/metrics", headers=headers or {})
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                out[key] = float(value)
        return out

    def rss(self):
        return rss_bytes(self.proc.pid)

    def stop(self, sig=signal.SIGTERM, timeout=60):
        """Signals the server and returns its exit code (None when it did not exit in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._drain.join(timeout=5)
        self.proc.stderr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def post(url, body, headers=None, timeout=60):
    """POST raw bytes (or a JSON-able object); returns (status, headers, parsed JSON or text)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, hdrs, raw = r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        status, hdrs, raw = e.code, dict(e.headers), e.read()
    try:
        return status, hdrs, json.loads(raw)
    except ValueError:
        return status, hdrs, raw.decode(errors="replace")


def run_sluice(*args, stdin=None):
    return subprocess.run([SLUICE, *map(str, args)], input=stdin, capture_output=True, text=True, check=True)


def sluice_run_greedy(model, prompt, n, chat):
    """`sluice run`'s greedy tokens for `prompt` (ignoring EOS): (generated ids, prompt token count)."""
    args = ["run", "-m", model, "-p", prompt, "-n", n, "--temp", "0", "--ignore-eos", "-t", "1"]
    r = run_sluice(*args, *(["--chat"] if chat else []))
    ids = [int(x) for x in re.search(r"generated ids: ([\d,]*)", r.stderr).group(1).split(",") if x]
    n_prompt = int(re.search(r"prompt: (\d+) tokens", r.stderr).group(1))
    return ids, n_prompt


def decode(model, ids):
    """The tokenizer's text for `ids`, special tokens skipped (what the server sends)."""
    r = run_sluice("tokenize", "-m", model, "--decode", "--skip-special", stdin=json.dumps({"ids": ids}) + "\n")
    return json.loads(r.stdout)["text"]
