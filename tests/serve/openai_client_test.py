"""sluice serve against the official openai Python client on the tiny model: chat and text
completions, streamed and not, give the same text; usage counts match the tokenizer and the
tokens generated; greedy output is `sluice run`'s for the same prompt; stop strings cut where
OpenAI cuts; seeded sampling repeats; a request beyond the context is a 400 the client raises."""
import unittest

import serve_fixture as fx
import openai

CHAT_PROMPT = "Write one line about rivers."
TEXT_PROMPT = "Once upon a time"


class OpenAIClient(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = fx.Server("--max-seqs", 4, "--context", 512)
        cls.client = cls.server.client()
        cls.model = cls.client.models.list().data[0].id

    @classmethod
    def tearDownClass(cls):
        code = cls.server.stop()
        cls.server.close()
        assert code == 0, f"sluice serve exited {code} after SIGTERM"

    def chat(self, **kw):
        return self.client.chat.completions.create(model=self.model, messages=[{"role": "user", "content": CHAT_PROMPT}],
                                                   **kw)

    def complete(self, **kw):
        return self.client.completions.create(model=self.model, prompt=TEXT_PROMPT, **kw)

    def test_models_lists_the_served_model(self):
        models = self.client.models.list().data
        self.assertEqual(len(models), 1)
        self.assertEqual(models[0].id, "tiny")
        self.assertEqual(models[0].object, "model")

    def test_greedy_chat_is_sluice_runs_output_with_its_usage(self):
        ids, n_prompt = fx.sluice_run_greedy(self.server.model, CHAT_PROMPT, 20, chat=True)
        r = self.chat(max_tokens=20, temperature=0, extra_body={"ignore_eos": True})
        self.assertEqual(r.object, "chat.completion")
        self.assertEqual(r.choices[0].message.role, "assistant")
        self.assertEqual(r.choices[0].message.content, fx.decode(self.server.model, ids))
        self.assertEqual(r.choices[0].finish_reason, "length")
        self.assertEqual(r.usage.prompt_tokens, n_prompt)
        self.assertEqual(r.usage.completion_tokens, 20)
        self.assertEqual(r.usage.total_tokens, n_prompt + 20)

    def test_greedy_completion_is_sluice_runs_output_with_its_usage(self):
        ids, n_prompt = fx.sluice_run_greedy(self.server.model, TEXT_PROMPT, 24, chat=False)
        r = self.complete(max_tokens=24, temperature=0, extra_body={"ignore_eos": True})
        self.assertEqual(r.object, "text_completion")
        self.assertEqual(r.choices[0].text, fx.decode(self.server.model, ids))
        self.assertEqual(r.usage.prompt_tokens, n_prompt)
        self.assertEqual(r.usage.completion_tokens, 24)

    def check_stream(self, create, text_of):
        whole = create(max_tokens=18, temperature=0, extra_body={"ignore_eos": True})
        chunks = list(create(max_tokens=18, temperature=0, extra_body={"ignore_eos": True}, stream=True,
                             stream_options={"include_usage": True}))
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.prompt_tokens, whole.usage.prompt_tokens)
        self.assertEqual(chunks[-1].usage.completion_tokens, whole.usage.completion_tokens)
        self.assertEqual(chunks[-2].choices[0].finish_reason, "length")
        for c in chunks[:-2]:
            self.assertIsNone(c.choices[0].finish_reason)
            self.assertIsNone(c.usage)
        self.assertEqual("".join(text_of(c) or "" for c in chunks[:-1]), text_of(whole))
        self.assertGreater(len(chunks), 5)  # text came token by token, not in one piece
        self.assertEqual(len({c.id for c in chunks}), 1)
        # Without include_usage there is no usage chunk.
        plain = list(create(max_tokens=3, temperature=0, stream=True))
        self.assertTrue(all(c.usage is None for c in plain))
        self.assertTrue(plain[-1].choices[0].finish_reason in ("stop", "length"))

    def test_streamed_chat_joins_to_the_same_text_and_usage(self):
        self.check_stream(self.chat, lambda c: c.choices[0].delta.content if c.object == "chat.completion.chunk"
                          else c.choices[0].message.content)

    def test_streamed_completion_joins_to_the_same_text_and_usage(self):
        self.check_stream(self.complete, lambda c: c.choices[0].text)

    def test_a_stop_string_cuts_the_text_before_it_streamed_or_not(self):
        full = self.complete(max_tokens=24, temperature=0, extra_body={"ignore_eos": True}).choices[0].text
        # A stop string from the middle of the greedy text, spanning what is likely a token boundary.
        stop = full[len(full) // 2:len(full) // 2 + 3]
        self.assertTrue(stop.strip())
        expected = full[:full.index(stop)]
        r = self.complete(max_tokens=24, temperature=0, stop=[stop, "\u2603never"], extra_body={"ignore_eos": True})
        self.assertEqual(r.choices[0].text, expected)
        self.assertEqual(r.choices[0].finish_reason, "stop")
        self.assertLess(r.usage.completion_tokens, 24)
        chunks = list(self.complete(max_tokens=24, temperature=0, stop=stop, stream=True,
                                    extra_body={"ignore_eos": True}))
        self.assertEqual("".join(c.choices[0].text for c in chunks), expected)
        self.assertEqual(chunks[-1].choices[0].finish_reason, "stop")
        for c in chunks:
            self.assertNotIn(stop, c.choices[0].text)

    def test_seeded_sampling_repeats_and_streams_the_same(self):
        kw = dict(max_tokens=16, temperature=0.9, top_p=0.95, seed=1234)
        a = self.complete(**kw).choices[0].text
        b = self.complete(**kw).choices[0].text
        s = "".join(c.choices[0].text for c in self.complete(stream=True, **kw))
        self.assertEqual(a, b)
        self.assertEqual(a, s)
        other = self.complete(**{**kw, "seed": 99}).choices[0].text
        self.assertNotEqual(a, other)

    def test_a_request_beyond_the_context_is_a_400_the_client_raises(self):
        with self.assertRaises(openai.BadRequestError) as e:
            self.complete(max_tokens=600)
        self.assertEqual(e.exception.status_code, 400)
        self.assertEqual(e.exception.code, "context_length_exceeded")
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.chat.completions.create(model=self.model, messages=[])
        self.assertEqual(e.exception.param, "messages")


if __name__ == "__main__":
    unittest.main(verbosity=2)
