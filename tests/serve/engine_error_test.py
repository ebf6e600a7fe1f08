"""sluice serve outlives a failed read of the model: while reads of the weights fail with EIO
(tests/serve/eio_preload.cpp, LD_PRELOAD into the server, the model streamed by the pread reader),
the requests running get the read's error (500 with code engine_error, or an error event in their
stream) naming the file, and once the disk reads again the server answers the next request with
the same greedy text as before the fault. Before, one failed read ended the process and every
client heard "the server shut down before the completion finished"."""
import http.client
import json
import os
import pathlib
import threading
import time
import unittest

import serve_fixture as fx

PRELOAD = os.environ.get("SLUICE_EIO_PRELOAD")


def stream_until_done(port, body, events):
    """POSTs a streamed completion and appends each server-sent event's data to `events`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/v1/completions", json.dumps({**body, "stream": True}),
                  {"Content-Type": "application/json"})
    r = conn.getresponse()
    for line in r:
        if line.startswith(b"data: "):
            events.append(line[6:].strip().decode())
            if events[-1] == "[DONE]":
                break
    conn.close()


@unittest.skipUnless(PRELOAD and pathlib.Path(PRELOAD).exists(), "SLUICE_EIO_PRELOAD is not built")
class EngineError(unittest.TestCase):
    def test_running_requests_get_the_read_error_and_the_server_serves_on(self):
        trigger = pathlib.Path(fx._scratch.name) / "eio.trigger"
        env = {"LD_PRELOAD": PRELOAD, "SLUICE_EIO_TRIGGER": str(trigger), "SLUICE_EIO_MATCH": "model.safetensors"}
        with fx.Server("--max-seqs", "4", "--resident", "none", "--io", "pread", env=env) as server:
            probe = {"prompt": "The disk", "max_tokens": 6, "temperature": 0, "ignore_eos": True}
            s, _, before = fx.post(server.url + "/v1/completions", probe)
            self.assertEqual(s, 200, before)

            long = {"prompt": "Until the disk fails", "max_tokens": 4000, "temperature": 0, "ignore_eos": True}
            plain, events = [], []
            t_plain = threading.Thread(target=lambda: plain.append(fx.post(server.url + "/v1/completions", long,
                                                                           timeout=120)))
            t_stream = threading.Thread(target=stream_until_done, args=(server.port, long, events))
            t_plain.start()
            t_stream.start()
            deadline = time.time() + 60
            while len(events) < 3 and time.time() < deadline:  # both are running steps
                time.sleep(0.01)
            self.assertGreaterEqual(len(events), 3)
            trigger.touch()
            t_plain.join(60)
            t_stream.join(60)
            trigger.unlink()

            status, _, body = plain[0]
            self.assertEqual(status, 500, body)
            self.assertEqual(body["error"]["code"], "engine_error")
            self.assertIn("model.safetensors", body["error"]["message"])
            self.assertIn("Input/output error", body["error"]["message"])
            self.assertEqual(events[-1], "[DONE]")
            error = json.loads(events[-2])["error"]
            self.assertEqual(error["code"], "engine_error")
            self.assertIn("Input/output error", error["message"])

            # The server serves on with the same loaded model (the streamer lets go of the failed
            # reads), and answers with the same greedy text as before.
            server.wait_ready(timeout=60)
            s, _, after = fx.post(server.url + "/v1/completions", probe, timeout=120)
            self.assertEqual(s, 200, after)
            self.assertEqual(after["choices"][0]["text"], before["choices"][0]["text"])
            self.assertIsNone(server.proc.poll())
            self.assertEqual(server.metrics()['sluice_requests_finished_total{reason="error"}'], 2)
            self.assertEqual(server.stop(), 0)


if __name__ == "__main__":
    unittest.main()
