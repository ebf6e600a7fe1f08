"""sluice serve under bad input, each case with its status while a streamed completion runs
beside it and finishes whole: malformed JSON and fields (400, OpenAI error objects), an unknown
endpoint (404) or method (405), an oversized body (413), oversized headers (431), a client that
sends its request too slowly (408, then closed), an idle kept-alive connection (closed), a wrong
or missing API key (401), garbage that is not HTTP (400), a full queue (429 with Retry-After)."""
import http.client
import socket
import threading
import time
import unittest

import serve_fixture as fx

KEY = "sk-test-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


def raw_exchange(port, data, wait=10):
    """Sends raw bytes and returns everything the server sends until it closes (or `wait` passes)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=wait)
    s.sendall(data)
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except socket.timeout:
        pass
    s.close()
    return out


class Background:
    """A streamed completion that runs through the whole test and must finish whole."""

    def __init__(self, server):
        self.chunks, self.error = [], None
        client = server.client(api_key=KEY)

        def run():
            try:
                for c in client.completions.create(model="tiny", prompt="Keep going", max_tokens=400, temperature=0,
                                                   stream=True, extra_body={"ignore_eos": True}):
                    self.chunks.append(c)
                    time.sleep(0.01)  # a slow but steady reader
            except Exception as e:  # noqa: BLE001
                self.error = e
        self.thread = threading.Thread(target=run)
        self.thread.start()

    def check(self, test):
        self.thread.join(timeout=120)
        test.assertFalse(self.thread.is_alive(), "the background stream hung")
        test.assertIsNone(self.error)
        test.assertEqual(self.chunks[-1].choices[0].finish_reason, "length")
        test.assertGreater(len(self.chunks), 100)


class BadInput(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = fx.Server("--api-key", KEY, "--max-seqs", 2, "--max-queue", 1, "--context", 4096,
                               "--max-body", "64K", "--max-header", "8K", "--header-timeout", 1.5,
                               "--idle-timeout", 1.5)
        cls.url = cls.server.url

    @classmethod
    def tearDownClass(cls):
        code = cls.server.stop()
        cls.server.close()
        assert code == 0, f"sluice serve exited {code} after SIGTERM"

    def assert_openai_error(self, status, body, code=None, param=None):
        self.assertIsInstance(body, dict, body)
        err = body["error"]
        self.assertIsInstance(err["message"], str)
        self.assertTrue(err["message"])
        self.assertIn("type", err)
        if code:
            self.assertEqual(err["code"], code)
        if param is not None:
            self.assertEqual(err["param"], param)

    def test_bad_requests_get_their_status_while_a_stream_runs(self):
        bg = Background(self.server)
        url = self.url + "/v1/chat/completions"
        cases = [
            (b'{"messages": [', 400, "invalid_json", None),
            (b"\xff\xfe not json", 400, "invalid_json", None),
            ({"messages": "hi"}, 400, "invalid_type", "messages"),
            ({"messages": [{"role": "user"}]}, 400, "missing_required_parameter", "messages[0].content"),
            ({"messages": [{"role": "user", "content": "x"}], "temperature": 7}, 400, "invalid_value", "temperature"),
            ({"messages": [{"role": "user", "content": "x"}], "max_tokens": -3}, 400, "invalid_value", "max_tokens"),
            ({"messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "unsupported_value", "n"),
            ({"messages": [{"role": "user", "content": "x"}], "stream": 1}, 400, "invalid_type", "stream"),
            ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5000}, 400, "context_length_exceeded",
             "messages"),
        ]
        for body, status, code, param in cases:
            with self.subTest(body=body):
                s, _, b = fx.post(url, body, AUTH)
                self.assertEqual(s, status)
                self.assert_openai_error(s, b, code, param)
        s, _, b = fx.post(self.url + "/v1/completions", {"prompt": [1, 2, 99999999]}, AUTH)
        self.assertEqual(s, 400)
        self.assert_openai_error(s, b, "invalid_value", "prompt")
        s, _, b = fx.post(self.url + "/v1/embeddings", {"input": "x"}, AUTH)
        self.assertEqual(s, 404)
        self.assert_openai_error(s, b, "not_found")
        req = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        req.request("GET", "/v1/chat/completions", headers=AUTH)
        r = req.getresponse()
        self.assertEqual(r.status, 405)
        r.read()
        req.close()
        bg.check(self)

    def test_oversized_body_and_headers_are_refused(self):
        bg = Background(self.server)
        s, _, b = fx.post(self.url + "/v1/completions", {"prompt": "x" * (70 << 10)}, AUTH)
        self.assertEqual(s, 413)
        self.assert_openai_error(s, b, "request_too_large")
        out = raw_exchange(self.server.port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (9 << 10) +
                           b"\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 431"), out[:80])
        out = raw_exchange(self.server.port, b"\x16\x03\x01 this is not HTTP\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 400"), out[:80])
        bg.check(self)

    def test_a_slow_client_gets_408_and_an_idle_one_is_closed(self):
        bg = Background(self.server)
        t0 = time.time()
        s = socket.create_connection(("127.0.0.1", self.server.port), timeout=10)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n")
        time.sleep(0.5)
        s.sendall(b"Authorization: Bearer " + KEY.encode() + b"\r\n")  # still trickling, never finishing
        out = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            out += chunk
        s.close()
        self.assertTrue(out.startswith(b"HTTP/1.1 408"), out[:80])
        self.assertLess(time.time() - t0, 6)
        # A connection that never sends anything is closed after the idle timeout.
        t0 = time.time()
        s = socket.create_connection(("127.0.0.1", self.server.port), timeout=10)
        self.assertEqual(s.recv(100), b"")
        self.assertLess(time.time() - t0, 6)
        s.close()
        # The server still answers.
        s, _, b = fx.post(self.url + "/v1/completions", {"prompt": "hi", "max_tokens": 2}, AUTH)
        self.assertEqual(s, 200)
        bg.check(self)

    def test_a_wrong_or_missing_api_key_is_401(self):
        bg = Background(self.server)
        body = {"prompt": "hi", "max_tokens": 2}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {KEY}x"},
                        {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
            with self.subTest(headers=headers):
                s, h, b = fx.post(self.url + "/v1/completions", body, headers)
                self.assertEqual(s, 401)
                self.assert_openai_error(s, b, "invalid_api_key")
                self.assertEqual(h.get("WWW-Authenticate"), "Bearer")
        import openai
        with self.assertRaises(openai.AuthenticationError):
            self.server.client(api_key="nope").models.list()
        self.assertEqual(self.server.client(api_key=KEY).models.list().data[0].id, "tiny")
        with self.assertRaises(Exception):
            self.server.metrics()
        self.assertIn("sluice_ready", self.server.metrics(AUTH))
        s, _, b = fx.post(self.url + "/v1/completions", body, {"Authorization": f"bearer {KEY}"})
        self.assertEqual(s, 200)
        bg.check(self)

    def test_a_full_queue_is_429_with_retry_after_and_then_serves_again(self):
        # Two slots and one place in the queue: three long requests fill them, the fourth is refused.
        client = self.server.client(api_key=KEY)
        streams = [client.completions.create(model="tiny", prompt=f"hold {i}", max_tokens=3000, temperature=0,
                                             stream=True, extra_body={"ignore_eos": True}) for i in range(3)]
        s, h, b = fx.post(self.url + "/v1/completions", {"prompt": "one more", "max_tokens": 2}, AUTH)
        self.assertEqual(s, 429)
        self.assert_openai_error(s, b, "rate_limit_exceeded")
        self.assertGreaterEqual(int(h["Retry-After"]), 1)
        m = self.server.metrics(AUTH)
        self.assertEqual(m['sluice_http_responses_total{endpoint="/v1/completions",code="429"}'], 1)
        for st in streams:
            st.close()  # the clients go away: their requests are cancelled
        deadline = time.time() + 30
        while time.time() < deadline:
            s, _, b = fx.post(self.url + "/v1/completions", {"prompt": "after", "max_tokens": 2}, AUTH)
            if s == 200:
                break
            time.sleep(0.2)
        self.assertEqual(s, 200)
        self.assertEqual(b["usage"]["completion_tokens"], 2)


if __name__ == "__main__":
    unittest.main(verbosity=2)
