"""sluice serve stops gracefully: on SIGTERM it refuses new connections at once, lets a running
stream finish whole within --shutdown-timeout and exits 0; a request still running at the
deadline gets an error event (streamed) or a 503 (not streamed), and the process still exits 0
shortly after the deadline; a server idle on kept-alive connections exits at once."""
import signal
import socket
import threading
import time
import unittest

import serve_fixture as fx
import openai


def consume(client, out, **kw):
    try:
        for c in client.completions.create(model="tiny", prompt="until the end", temperature=0, stream=True,
                                           extra_body={"ignore_eos": True}, **kw):
            out.append(c)
    except Exception as e:  # noqa: BLE001
        out.append(e)


class Shutdown(unittest.TestCase):
    def test_sigterm_lets_a_running_stream_finish_then_exits_0(self):
        with fx.Server("--shutdown-timeout", 60) as server:
            chunks = []
            t = threading.Thread(target=consume, args=(server.client(), chunks), kwargs={"max_tokens": 600, "stream_options": {"include_usage": True}})
            t.start()
            while not chunks:
                time.sleep(0.01)
            idle = socket.create_connection(("127.0.0.1", server.port))  # a kept-alive connection with nothing to do
            t0 = time.time()
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            with self.assertRaises(OSError):
                socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
            self.assertEqual(idle.recv(10), b"")  # closed by the shutdown
            idle.close()
            self.assertEqual(server.proc.wait(timeout=60), 0)  # one signal: a second one cancels at once
            t.join(timeout=10)
            self.assertLess(time.time() - t0, 60)
            self.assertFalse(any(isinstance(c, Exception) for c in chunks), chunks[-1])
            self.assertEqual(chunks[-2].choices[0].finish_reason, "length")
            self.assertEqual(chunks[-1].usage.completion_tokens, 600)
            self.assertTrue(any("serve: stopped" in line for line in server.log))

    def test_requests_still_running_at_the_deadline_are_cancelled_and_it_exits_0(self):
        with fx.Server("--shutdown-timeout", 1, "--context", 4096) as server:
            streamed = []
            t = threading.Thread(target=consume, args=(server.client(), streamed), kwargs={"max_tokens": 4000})
            t.start()
            plain = []

            def whole():
                try:
                    plain.append(server.client().completions.create(
                        model="tiny", prompt="long", max_tokens=4000, temperature=0, extra_body={"ignore_eos": True}))
                except Exception as e:  # noqa: BLE001
                    plain.append(e)
            u = threading.Thread(target=whole)
            u.start()
            while not streamed or server.metrics()["sluice_active_sequences"] < 2:
                time.sleep(0.02)
            t0 = time.time()
            code = server.stop(timeout=30)
            elapsed = time.time() - t0
            t.join(timeout=10)
            u.join(timeout=10)
            self.assertEqual(code, 0)
            self.assertLess(elapsed, 10)
            self.assertGreater(elapsed, 0.9)
            self.assertIsInstance(streamed[-1], openai.APIError)  # the stream's error event
            self.assertIn("shut down", str(streamed[-1]))
            self.assertIsInstance(plain[-1], openai.InternalServerError)
            self.assertEqual(plain[-1].status_code, 503)


if __name__ == "__main__":
    unittest.main(verbosity=2)
