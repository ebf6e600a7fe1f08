"""sluice serve under 32 concurrent openai clients for a bounded time (60 s by default;
SLUICE_SERVE_SOAK_SECONDS), on a server with fewer slots and queue places than clients: every
request is answered whole (a stream ends with its finish reason, usage adds up) or refused with
429 and Retry-After; none is lost or hangs; the server's memory stays bounded; and a client
killed mid-stream frees its slot, as /metrics shows."""
import os
import random
import signal
import subprocess
import sys
import threading
import time
import unittest

import serve_fixture as fx
import openai

SECONDS = float(os.environ.get("SLUICE_SERVE_SOAK_SECONDS", "60"))
CLIENTS = 32

KILLED_CLIENT = r"""
import sys, openai
client = openai.OpenAI(base_url=sys.argv[1], api_key="x", max_retries=0)
if sys.argv[2] == "stream":
    for chunk in client.completions.create(model="tiny", prompt="never ending", max_tokens=3500, temperature=0,
                                           stream=True, extra_body={"ignore_eos": True}):
        if chunk.choices and chunk.choices[0].text:
            print("streaming", flush=True)
            sys.stdin.read()  # until killed
else:
    print("waiting", flush=True)
    client.completions.create(model="tiny", prompt="never ending", max_tokens=3500, temperature=0,
                              extra_body={"ignore_eos": True})
"""


class Concurrency(unittest.TestCase):
    def test_32_clients_all_answered_memory_bounded_and_a_killed_client_frees_its_slot(self):
        with fx.Server("--max-seqs", 8, "--max-queue", 8, "--context", 4096, threads=1) as server:
            self.soak(server)
            self.killed_client(server)
            self.assertEqual(server.stop(), 0)

    def soak(self, server):
        stop_at = time.time() + SECONDS
        results, failures, lock = [], [], threading.Lock()

        def client_loop(i):
            rng = random.Random(i)
            client = server.client(timeout=90)
            while time.time() < stop_at:
                stream = rng.random() < 0.5
                chat = rng.random() < 0.5
                n = rng.randint(1, 48)
                kw = dict(model="tiny", max_tokens=n, temperature=rng.choice([0, 0.8]), seed=i,
                          extra_body={"ignore_eos": rng.random() < 0.7})
                if stream:
                    kw["stream_options"] = {"include_usage": True}
                t0 = time.time()
                try:
                    if chat:
                        r = client.chat.completions.create(messages=[{"role": "user", "content": f"client {i}"}],
                                                           stream=stream, **kw)
                    else:
                        r = client.completions.create(prompt=f"client {i} says", stream=stream, **kw)
                    if stream:
                        chunks = list(r)
                        usage, finish = chunks[-1].usage, chunks[-2].choices[0].finish_reason
                        assert chunks[-1].choices == [], "the usage chunk comes last"
                    else:
                        usage, finish = r.usage, r.choices[0].finish_reason
                    assert finish in ("stop", "length"), finish
                    assert 1 <= usage.completion_tokens <= n or (finish == "stop" and usage.completion_tokens == 0)
                    if kw["extra_body"]["ignore_eos"]:
                        assert finish == "length" and usage.completion_tokens == n, (finish, usage)
                    outcome = "ok"
                except openai.RateLimitError as e:
                    assert int(e.response.headers["Retry-After"]) >= 1
                    outcome = "429"
                    time.sleep(0.2 + rng.random() * 0.5)  # about what Retry-After asks, jittered
                except Exception as e:  # noqa: BLE001
                    with lock:
                        failures.append(f"client {i}: {type(e).__name__}: {e}")
                    return
                with lock:
                    results.append((outcome, time.time() - t0))

        rss, sampling = [], [True]

        def sample_memory():
            while sampling[0]:
                rss.append((time.time(), server.rss()))
                time.sleep(0.5)

        sampler = threading.Thread(target=sample_memory)
        sampler.start()
        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=SECONDS + 120)
        sampling[0] = False
        sampler.join()
        self.assertFalse(any(t.is_alive() for t in threads), "a client hung")
        self.assertEqual(failures, [])
        ok = sum(1 for o, _ in results if o == "ok")
        refused = sum(1 for o, _ in results if o == "429")
        print(f"\n{CLIENTS} clients, {SECONDS:.0f} s: {ok} answered, {refused} refused with 429; "
              f"slowest answer {max(s for _, s in results):.1f} s", file=sys.stderr)
        self.assertGreater(ok, CLIENTS)
        self.assertGreater(refused, 0)  # 32 clients on 8 slots + 8 queue places must meet the bound
        m = server.metrics()
        answered = sum(v for k, v in m.items() if k.startswith("sluice_http_responses_total{endpoint=\"/v1/")
                       and 'code="200"' in k and "models" not in k)
        self.assertEqual(answered, ok)
        self.assertEqual(m['sluice_http_responses_total{endpoint="/v1/completions",code="429"}'] +
                         m['sluice_http_responses_total{endpoint="/v1/chat/completions",code="429"}'], refused)
        self.assertEqual(m['sluice_requests_finished_total{reason="stop"}'] +
                         m['sluice_requests_finished_total{reason="length"}'], ok)
        # Memory: after the first quarter (model loaded, slots and buffers grown) it stays within
        # 64 MiB of where it was; a leak per request (thousands of them) would pass that.
        t_start = rss[0][0]
        warm = [b for t, b in rss if t - t_start < SECONDS / 4]
        later = [b for t, b in rss if t - t_start >= SECONDS / 4]
        print(f"server RSS: {max(warm) / 2**20:.0f} MiB in the first quarter, at most {max(later) / 2**20:.0f} MiB "
              f"after", file=sys.stderr)
        self.assertLess(max(later), max(warm) + (64 << 20))

    def killed_client(self, server):
        # Killed mid-stream (noticed by the next write or the read that watches the socket), and
        # killed while waiting for a whole answer (noticed by that read alone).
        for mode, says in (("stream", "streaming"), ("whole", "waiting")):
            with self.subTest(mode=mode):
                cancelled0 = server.metrics()['sluice_requests_finished_total{reason="cancelled"}']
                with subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, server.url + "/v1", mode],
                                      stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True) as proc:
                    self.assertEqual(proc.stdout.readline().strip(), says)
                    deadline = time.time() + 20
                    while server.metrics()["sluice_output_tokens_total"] == 0 or \
                            server.metrics()["sluice_active_sequences"] < 1:
                        self.assertLess(time.time(), deadline)
                        time.sleep(0.05)
                    time.sleep(0.2)  # generating
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                deadline = time.time() + 20
                while time.time() < deadline:
                    m = server.metrics()
                    if m['sluice_requests_finished_total{reason="cancelled"}'] == cancelled0 + 1:
                        break
                    time.sleep(0.1)
                self.assertEqual(m['sluice_requests_finished_total{reason="cancelled"}'], cancelled0 + 1)
                self.assertEqual(m["sluice_active_sequences"], 0)
                self.assertEqual(m["sluice_queue_depth"], 0)
                tokens = m["sluice_output_tokens_total"]
                time.sleep(0.5)
                self.assertEqual(server.metrics()["sluice_output_tokens_total"], tokens)  # nothing runs for it
                # The freed slot serves the next request.
                r = server.client().completions.create(model="tiny", prompt="after", max_tokens=3, temperature=0,
                                                       extra_body={"ignore_eos": True})
                self.assertEqual(r.usage.completion_tokens, 3)


if __name__ == "__main__":
    unittest.main(verbosity=2)
