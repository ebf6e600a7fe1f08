#!/usr/bin/env python3
"""Oracle fixtures for the tokenizer: a varied corpus encoded by Hugging Face `tokenizers` with the
real DeepSeek-V3 tokenizer.json (../shared/models/deepseek-v3-tokenizer), with and without special
tokens, and chat renders by transformers' apply_chat_template with the real tokenizer_config.json.

  pip install tokenizers transformers jinja2
  python3 scripts/make_tokenizer_fixtures.py      # writes tests/data/tokenizer/
"""
import json
import pathlib
import random

from tokenizers import Tokenizer

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOK_DIR = ROOT.parent / "shared" / "models" / "deepseek-v3-tokenizer"
OUT = ROOT / "tests" / "data" / "tokenizer"
BOS_ID = 0

HAND = [
    "", " ", "  ", "\n", "\r\n", "\t", "Hello, world!", "Hello world", " Hello", "hello  world",
    "The capital of France is Paris.", "I'm sure you'll like it; it's what we've done.",
    "don't", "DON'T", "U.S.A.", "e.g. i.e. etc.", "mr.Smith", "(parenthesis)", "[brackets] {braces}",
    "a-b_c/d\\e", "foo@example.com", "https://example.com/path?query=1&x=y#frag",
    "1", "12", "123", "1234", "12345", "123456", "1234567", "3.14159", "1,000,000", "-42", "+7", "0x1F",
    "2024-11-28", "10:45:00", "99%", "$100.00", "€50", "£3", "¥1000", "1st 2nd 3rd 4th",
    "你好，世界！", "我爱北京天安门。", "中文和English混合", "深度求索", "人工智能的未来",
    "こんにちは世界", "カタカナとひらがな", "東京は日本の首都です。", "ｶﾀｶﾅ半角",
    "안녕하세요 세계", "한국어 텍스트입니다.", "مرحبا بالعالم", "النص العربي مع أرقام ١٢٣",
    "नमस्ते दुनिया", "Привет, мир!", "Γειά σου Κόσμε", "שלום עולם", "สวัสดีชาวโลก", "Xin chào thế giới",
    "😀", "😀😃😄", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷🇯🇵", "❤️", "I ❤️ NY", "✓ ✗ ★ ☆", "→ ← ↑ ↓",
    "e\u0301", "n\u0303o", "Zalgo: Z\u0335\u0321a\u0336l\u0337g\u0338o", "\u200b zero width", "a\u00a0b", "\ufeffBOM",
    "def f(x):\n    return x * 2\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
    "#include <stdio.h>\nint main() { printf(\"hi\\n\"); }", "SELECT * FROM t WHERE id = 1;",
    "const x = () => { return 42; };", "fn main() { println!(\"{}\", 1); }", "<div class=\"a\">text</div>",
    "{\"key\": [1, 2, {\"nested\": null}]}", "x**2 + y**2 == z**2", "a && b || !c", "i++; j--; k += 1;",
    "    indented", "\t\ttabs", "trailing   ", "   leading", "a\n\nb", "a\n\n\n\nb", "a \n b", "\n\n\n",
    " " * 17, "\t" * 9, "\n" * 7, " \n \n ", "line1\r\nline2\r\n", "mixed \t \n whitespace",
    "!!!", "???", "...", "---", "***", "!?!?", "—", "–", "…", "«quotes»", "„quotes“", "'single'", "`backtick`",
    "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>Hi<｜Assistant｜>Hello",
    "text <｜begin▁of▁sentence｜> more", "<｜fim▁begin｜>code<｜fim▁hole｜>more<｜fim▁end｜>",
    "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f", "<think>reasoning</think>answer",
    "<｜place▁holder▁no▁5｜>", "<|EOT|>", "<｜User｜><｜User｜>", "<｜User", "｜>", "<<｜User｜>>",
    "ÀÉÎÕÜ àéîõü ß Æ œ", "İstanbul ılık", "ǅ ǈ ǋ", "ﬁ ﬂ ﬀ", "Ⅻ ⅻ", "½ ¾ ⅓", "²³¹", "٣٤٥", "१२३", "〇一二三",
    "\x00", "\x01\x02", "\x7f", "a\x1bb", "tab\tsep\tvalues", "CamelCaseIdentifier", "snake_case_name",
    "SCREAMING_CASE", "kebab-case-name", "MiXeD cAsE", "ALLCAPS WORDS HERE", "a" * 200, "ab" * 100,
    "word " * 50, "数字123和字母abc", "日本語とEnglishと123", "한글123abc", "emoji😀in😃text", "🙂.", "x🙂y",
]


def generated(rng):
    out = []
    alphabet = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \n\t.,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`"
                "你好世界中文日本語こんにちはカタカナ한국어مرحباПриветΓειά😀👍🏽é")
    for n in range(160):
        length = rng.randint(1, 80)
        out.append("".join(rng.choice(alphabet) for _ in range(length)))
    for n in range(1, 25):
        out.append("7" * n)
        out.append(" " * n + "x")
    return out


def main():
    rng = random.Random(1234)
    corpus = HAND + generated(rng)
    tok = Tokenizer.from_file(str(TOK_DIR / "tokenizer.json"))
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "corpus.jsonl", "w", encoding="utf-8") as f:
        for text in corpus:
            plain = tok.encode(text, add_special_tokens=False).ids
            # This tokenizer.json has no post-processor, so `tokenizers` adds nothing itself;
            # the BOS comes from tokenizer_config.json's add_bos_token, as transformers'
            # LlamaTokenizerFast and llama.cpp apply it (spec §5.2 step 5).
            special = [BOS_ID] + plain
            f.write(json.dumps({"text": text, "ids": plain, "ids_with_special": special}, ensure_ascii=False) + "\n")
    print(f"{len(corpus)} strings -> {OUT / 'corpus.jsonl'}")

    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(str(TOK_DIR))
    chats = [
        [{"role": "user", "content": "Hello!"}],
        [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "What is 2+2?"}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
         {"role": "user", "content": "Tell me a joke."}],
        [{"role": "system", "content": "A"}, {"role": "system", "content": "B"}, {"role": "user", "content": "中文"}],
    ]
    renders = []
    for c in chats:
        for gen in (True, False):
            renders.append({"messages": c, "add_generation_prompt": gen,
                            "text": hf.apply_chat_template(c, tokenize=False, add_generation_prompt=gen)})
    (OUT / "chat_v3.json").write_text(json.dumps(renders, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"{len(renders)} chat renders -> {OUT / 'chat_v3.json'}")


if __name__ == "__main__":
    main()
