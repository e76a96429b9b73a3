#!/usr/bin/env python3
"""Expected chat-template renderings for tests/unit/test_chat_template.cpp, made by the reference:
transformers' apply_chat_template (jinja2) with a tokenizer built around each template, offline.

Templates (data, committed beside the outputs in tests/fixtures/chat/):
  qwen3.5-moe.jinja  The Qwen3.5 template, as published with Qwen/Qwen3.5-35B-A3B (the mlx-community
                     conversion Qwen3.5-35B-A3B-4bit carries it unchanged as chat_template.jinja; the whole
                     Qwen3.5 family, 397B-A17B included, ships this text). Checked against the SHA256 a public
                     copy records for that file:
                     a4aee8afcf2e0711942cf848899be66016f8d14a889ff9ede07bca099c28f715
  qwen3-moe.jinja    The Qwen3 template (Qwen/Qwen3-30B-A3B and the other Qwen3 releases of April 2025 share
                     it), as llama.cpp keeps it in models/templates/Qwen-Qwen3-0.6B.jinja.
  qwen3-coder.jinja  A Qwen3-Coder-style template (XML tool schemas; macros with defaults, reject("in"),
                     dict.keys()), as a public Swift test suite records Qwen3-Coder's. Not checked against
                     the hub's file: it is here to exercise the interpreter, not as the model's reference.

Outputs:
  <template>.cases.json  {"template", "special_tokens", "cases": [{"name", "messages", "tools",
                         "add_generation_prompt", "kwargs", "expected" | "error" + "error_type"}]}
  jinja_features.json    small templates covering each Jinja feature the C++ interpreter claims, each with
                         its context and jinja2's output (or error), compiled as transformers compiles.

Usage: python3 tools/make_chat_fixtures.py [--check]   (--check: compare instead of writing)
Needs: transformers (>= 4.5x; tested with 5.23), jinja2 >= 3.1.6, tokenizers. No network.
"""
import argparse
import copy
import hashlib
import json
import os
import sys

from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast
from transformers.utils.chat_template_utils import _compile_jinja_template

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "tests", "fixtures", "chat")
QWEN35_SHA256 = "a4aee8afcf2e0711942cf848899be66016f8d14a889ff9ede07bca099c28f715"
SPECIAL_TOKENS = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}  # both Qwen tokenizer_configs

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city. Use \"metric\" units by default.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Zürich"},
                "units": {"type": "string", "enum": ["metric", "imperial"]},
                "days": {"type": "integer", "minimum": 1},
            },
            "required": ["city"],
        },
    },
}
SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web\tfor a query; returns <b>snippets</b> & links.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}, "limit": {"type": "number"}}},
    },
}


def tool_call(name, arguments):
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


EDIT_TOOL = {  # unusual schema fields: type lists, mixed enums, extra keys, a return schema
    "type": "function",
    "function": {
        "name": "edit", "description": "  Edit a file.\n", "return": {"type": "string"},
        "parameters": {
            "type": "object", "required": ["path", 3],
            "properties": {
                "path": {"type": ["string", "null"], "description": "p", "minLength": 1, "x-tag": True, "$ref": "#/a"},
                "mode": {"type": "string", "enum": ["a", "b", 2, None, 1.5]},
                "opts": {"type": "object", "properties": {"k": {"type": "integer"}}, "required": ["k"],
                         "default": {"k": 1}},
                "n": {"type": "number", "maximum": 1e20, "multipleOf": 0.1},
            },
        },
    },
}


def cases():
    sys_msg = {"role": "system", "content": "You are a helpful assistant."}
    c = []

    def add(name, messages, tools=None, gen=True, kwargs=None):
        c.append({"name": name, "messages": messages, "tools": tools, "add_generation_prompt": gen,
                  "kwargs": kwargs if kwargs is not None else {}})

    add("single_user", [{"role": "user", "content": "Hello!"}])
    add("single_user_no_gen_prompt", [{"role": "user", "content": "Hello!"}], gen=False)
    add("system_user_thinking_off", [sys_msg, {"role": "user", "content": "What is 2+2?"}],
        kwargs={"enable_thinking": False})
    add("system_user_thinking_on", [sys_msg, {"role": "user", "content": "What is 2+2?"}],
        kwargs={"enable_thinking": True})
    add("no_kwargs", [sys_msg, {"role": "user", "content": "Hi"}])
    history = [
        sys_msg,
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "<think>\nSmall primes: 2, 3, 5.\n</think>\n\n2 is prime."},
        {"role": "user", "content": "Another one?"},
    ]
    add("multi_turn_think_in_history", history)
    add("multi_turn_think_in_history_off", history, kwargs={"enable_thinking": False})
    add("multi_turn_reasoning_field", [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello.", "reasoning_content": "The user greets me."},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye!", "reasoning_content": "  They leave.\n"},
    ], gen=False)
    add("ends_with_assistant_think", [
        {"role": "user", "content": "Count to 3"},
        {"role": "assistant", "content": "<think>easy</think>1, 2, 3"},
    ], gen=False)
    add("assistant_empty_reasoning_after_query", [
        {"role": "user", "content": "Say yes"},
        {"role": "assistant", "content": "yes"},
    ], gen=False)
    add("tools_system_and_calls", [
        sys_msg,
        {"role": "user", "content": "Weather in Zürich and Paris, 3 days?"},
        {"role": "assistant", "content": "<think>\nTwo calls needed.\n</think>\n\nLet me check.", "tool_calls": [
            tool_call("get_weather", {"city": "Zürich", "units": "metric", "days": 3, "hourly": True,
                                      "threshold": 0.5, "note": None}),
            tool_call("get_weather", {"city": "Paris", "days": 3}),
        ]},
        {"role": "tool", "content": "{\"temp\": 21.5, \"sky\": \"sunny\"}"},
        {"role": "tool", "content": "{\"temp\": 18, \"sky\": \"rain\"}"},
        {"role": "assistant", "content": "Zürich: 21.5 °C, sunny. Paris: 18 °C, rain."},
        {"role": "user", "content": "Thanks!"},
    ], tools=[WEATHER_TOOL, SEARCH_TOOL])
    add("tools_no_system_pending_tool_result", [
        {"role": "user", "content": "Search for \"jinja\" docs"},
        {"role": "assistant", "content": None, "tool_calls": [
            tool_call("search", {"query": "jinja \"templates\"\n\\ back", "limit": 5,
                                 "filters": {"lang": ["en", "de"], "safe": True, "score": 0.25},
                                 "tags": ["a", 1, None, False]}),
        ]},
        {"role": "tool", "content": "<results>\n1. jinja.palletsprojects.com\n</results>"},
    ], tools=[SEARCH_TOOL])
    add("tool_call_without_function_wrapper", [
        {"role": "user", "content": "Go"},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "search", "arguments": {"query": "x"}}]},
        {"role": "tool", "content": "ok"},
        {"role": "assistant", "content": "Done."},
    ], tools=[SEARCH_TOOL], gen=False)
    add("unicode_content", [
        {"role": "system", "content": "  Réponds en français. 日本語もOK 🙂  "},
        {"role": "user", "content": "Ünïcödé: ñ, ß, 中文, emoji 🚀🔥, RTL עברית, zero-width\u200bspace,\ttab"},
        {"role": "assistant", "content": "<think>\nΣκέψη…\n</think>\n\nΑπάντηση ✓"},
        {"role": "user", "content": "\u3000全角スペース\u3000"},
    ])
    add("empty_tools_list", [{"role": "user", "content": "Hi"}], tools=[])
    add("unusual_tool_schema_and_args", [
        {"role": "user", "content": "do"},
        {"role": "assistant", "content": "  ok  ", "tool_calls": [
            tool_call("edit", {"path": "/a", "mode": ["x", 1], "opts": {"k": 2}, "n": 0.1, "f": False})]},
        {"role": "tool", "content": "done"},
        {"role": "tool", "content": "done2"},
    ], tools=[EDIT_TOOL, WEATHER_TOOL])
    add("system_only_error", [sys_msg])
    add("system_not_first_error", [{"role": "user", "content": "a"}, sys_msg])
    add("multimodal_content_list", [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in this image?"},
                                     {"type": "video"}, {"type": "text", "text": " And the clip?"}]},
    ])
    add("vision_ids", [
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare."}]},
    ], kwargs={"add_vision_id": True})
    add("unexpected_role_error", [{"role": "user", "content": "a"}, {"role": "narrator", "content": "b"}])
    return c


def make_tokenizer(template):
    t = Tokenizer(models.WordLevel({"<unk>": 0, "<|im_end|>": 1, "<|endoftext|>": 2}, unk_token="<unk>"))
    tok = PreTrainedTokenizerFast(tokenizer_object=t, **SPECIAL_TOKENS)
    tok.chat_template = template
    return tok


def render_cases(template_file):
    template = open(os.path.join(FIXTURES, template_file), encoding="utf-8").read()
    tok = make_tokenizer(template)
    assert tok.special_tokens_map == SPECIAL_TOKENS, tok.special_tokens_map
    out = {"template": template_file, "special_tokens": SPECIAL_TOKENS, "cases": []}
    for case in cases():
        entry = copy.deepcopy(case)
        try:
            entry["expected"] = tok.apply_chat_template(
                copy.deepcopy(case["messages"]), tools=copy.deepcopy(case["tools"]), tokenize=False,
                add_generation_prompt=case["add_generation_prompt"], **case["kwargs"])
        except Exception as e:  # jinja2's TemplateError (raise_exception), TypeError, UndefinedError
            entry["error"] = str(e)
            entry["error_type"] = type(e).__name__
        out["cases"].append(entry)
    return out


# (name, template, context): each Jinja feature the C++ interpreter claims, rendered by jinja2 as
# transformers configures it (trim_blocks, lstrip_blocks, loopcontrols, its tojson and globals).
FEATURES = [
    ("text_and_output", "a{{ x }}b {{ 'lit' }} {{ 1 }} {{ 2.5 }} {{ none }} {{ true }}", {"x": "X"}),
    ("python_str_of_values", "{{ l }}|{{ d }}|{{ f }}|{{ g }}|{{ h }}|{{ s }}", {
        "l": [1, "a", None, True, 2.0], "d": {"k": "it's", "n": [1]}, "f": 1e-05, "g": 1e16, "h": 0.1 + 0.2,
        "s": "q\"uo'te"}),
    ("whitespace_control", "A  {%- if 1 %}  B  {%- endif -%}  C\n  {{- x -}}  \nD", {"x": 1}),
    ("trim_and_lstrip_blocks", "line1\n    {% if true %}\n    body\n    {% endif %}\nline2\n{# c #}\nend", {}),
    ("plus_disables_lstrip", "a\n    {%+ if true %}x{% endif %}\n", {}),
    ("trailing_newline_dropped", "x\n", {}),
    ("if_elif_else", "{% for v in [1, 2, 3, 'q'] %}{% if v == 1 %}one{% elif v is string %}str{% else %}"
                     "other{% endif %},{% endfor %}", {}),
    ("for_loop_vars", "{% for x in xs %}{{ loop.index0 }}{{ loop.index }}{{ loop.first }}{{ loop.last }}"
                      "{{ loop.length }}{{ loop.revindex }}[{{ loop.previtem }}|{{ loop.nextitem }}];{% endfor %}",
     {"xs": ["a", "b", "c"]}),
    ("for_if_filter_and_else", "{% for x in xs if x > 1 %}{{ x }}/{{ loop.length }} {% else %}none{% endfor %}"
                               "{% for y in [] %}y{% else %}empty{% endfor %}", {"xs": [1, 2, 3]}),
    ("for_unpack_items", "{% for k, v in d|items %}{{ k }}={{ v }};{% endfor %}{% for k, v in d.items() %}"
                         "{{ k }}{% endfor %}{% for k in d %}{{ k }}{% endfor %}", {"d": {"b": 1, "a": [2]}}),
    ("loop_controls", "{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i > 4 %}"
                      "{% break %}{% endif %}{{ i }}{% endfor %}", {}),
    ("loop_scoping", "{% set x = 'outer' %}{% for i in [1] %}{% set x = 'inner' %}{{ x }}{% endfor %}{{ x }}", {}),
    ("namespace", "{% set ns = namespace(a=1, found=false) %}{% for i in [1, 2, 3] %}{% set ns.a = ns.a + i %}"
                  "{% if i == 2 %}{% set ns.found = true %}{% endif %}{% endfor %}{{ ns.a }} {{ ns.found }}", {}),
    ("set_block_and_tuple", "{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set t %}in{{ a }}{% endset %}[{{ t }}]", {}),
    ("macro", "{% macro m(x, y='d', z=none) %}<{{ x }}|{{ y }}|{{ z }}>{% endmacro %}{{ m(1) }}{{ m(1, 2) }}"
              "{{ m('a', z=3) }}{{ m(2)|trim }}", {}),
    ("string_ops", "{{ 'a' ~ 1 ~ none }} {{ 'x' + 'y' }} {{ 'ab' * 3 }} {{ s[0] }}{{ s[-1] }} {{ s[1:3] }} "
                   "{{ s[::-1] }} {{ s[::2] }} {{ s|length }}", {"s": "héllo"}),
    ("arithmetic", "{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 1 + 2.5 }} "
                   "{{ 3 - 5 }} {{ -x }} {{ (1 + 2) * 3 }}", {"x": 4}),
    ("comparisons", "{{ 1 < 2 }} {{ 2 <= 1 }} {{ 'a' < 'b' }} {{ 1 == 1.0 }} {{ 'a' != 'b' }} {{ 1 < 2 < 3 }} "
                    "{{ 'b' in 'abc' }} {{ 2 in [1, 2] }} {{ 'k' in d }} {{ 'z' not in d }} {{ [1, 2] == [1, 2] }}",
     {"d": {"k": 1}}),
    ("boolean_ops", "{{ not x }} {{ x and y }} {{ x or y }} {{ none or 'default' }} {{ 0 and 1 }} "
                    "{{ not (x and not y) }}", {"x": True, "y": ""}),
    ("conditional_expr", "{{ 'yes' if x else 'no' }} {{ 'a' if not x }}|{{ 1 if x else 2 if y else 3 }}",
     {"x": False, "y": True}),
    ("tests", "{{ x is defined }} {{ nope is defined }} {{ nope is undefined }} {{ n is none }} {{ s is string }} "
              "{{ d is mapping }} {{ l is sequence }} {{ s is sequence }} {{ d is sequence }} {{ l is iterable }} "
              "{{ 3 is number }} {{ 3 is integer }} {{ 3.0 is float }} {{ true is boolean }} {{ false is false }} "
              "{{ 4 is even }} {{ 3 is odd }} {{ 9 is divisibleby 3 }} {{ 2 is eq 2 }} {{ s is not none }} "
              "{{ nope is iterable }} {{ s is lower }}",
     {"x": 1, "n": None, "s": "str", "d": {}, "l": [1]}),
    ("attr_and_item_access", "{{ m.role }} {{ m['content'] }} {{ m.missing is defined }} {{ l[0].a }} {{ l[-1] }} "
                             "{{ m.get('role') }} {{ m.get('zz', 'dflt') }} {{ l[5] is defined }}",
     {"m": {"role": "user", "content": "hi"}, "l": [{"a": 1}, 2, 3]}),
    ("filters_basic", "{{ '  pad  '|trim }}|{{ xs|length }}|{{ xs|first }}|{{ xs|last }}|{{ xs|join(', ') }}|"
                      "{{ 'AbC'|lower }}{{ 'AbC'|upper }}|{{ 'a-b-a'|replace('a', 'x') }}|{{ nope|default('d') }}|"
                      "{{ ''|default('e', true) }}|{{ 5|string }}{{ true|string }}|{{ xs|reverse|list }}|"
                      "{{ '3'|int + 1 }}|{{ 2|float }}|{{ -3|abs }}|{{ 'word up'|title }}|{{ 'hello'|capitalize }}|"
                      "{{ xs|count }}|{{ [3, 1, 2]|sort }}|{{ [1, 1, 2]|unique|list }}|{{ [1, 2, 3]|sum }}|"
                      "{{ [4, 9]|max }}{{ [4, 9]|min }}|{{ 'x\\ny'|indent(2, true) }}|{{ 2.5|round }}",
     {"xs": ["a", "b", "c"]}),
    ("filters_select_map", "{{ ms|selectattr('role', 'equalto', 'user')|map(attribute='content')|join(',') }}|"
                           "{{ ms|rejectattr('role', 'eq', 'user')|list|length }}|{{ [0, 1, 2, '']|select|list }}|"
                           "{{ [1, 2, 3, 4]|reject('odd')|list }}|{{ ['a', 'b']|map('upper')|list }}|"
                           "{{ ms|map(attribute='role')|unique|list }}",
     {"ms": [{"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"},
             {"role": "user", "content": "u2"}]}),
    ("tojson", "{{ d|tojson }}\n{{ d|tojson(indent=2) }}\n{{ d|tojson(sort_keys=true) }}\n{{ s|tojson }}\n"
               "{{ [1.0, 2.5e-7, 1e20, -0.0, 3]|tojson }}\n{{ d|tojson(separators=(',', ':')) }}",
     {"d": {"z": "Zürich \"quoted\" \\ back\nline\ttab\u0001", "a": [True, None, {}, []], "n": 1.5},
      "s": "<tag> & 'single' 🚀"}),
    ("string_methods", "{{ s.startswith('He') }} {{ s.endswith(('x', 'd!')) }} {{ s.split(' ') }} {{ s.split() }} "
                       "{{ 'a,b,,c'.split(',', 1) }} {{ '  x  '.strip() }}|{{ 'xxhixx'.strip('x') }}|"
                       "{{ '\\n\\nhi\\n'.lstrip('\\n') }}|{{ 'hi  '.rstrip() }}|{{ s.replace('l', 'L', 2) }} "
                       "{{ s.lower() }} {{ s.upper() }} {{ 'a b c'.rsplit(' ', 1) }} {{ s.find('o') }} "
                       "{{ s.count('l') }} {{ '-'.join(['x', 'y']) }} {{ s.title() }}",
     {"s": "Hello World!"}),
    ("think_split", "{% set c = content.split('</think>')[-1].lstrip('\\n') %}"
                    "{% set r = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
                    "[{{ r }}][{{ c }}]", {"content": "<think>\nreason\n</think>\n\nanswer"}),
    ("raise_exception", "{% if x %}{{ raise_exception('Bad x: ' ~ x) }}{% endif %}ok", {"x": 3}),
    ("undefined_attribute_error", "{{ nope.attr }}", {}),
    ("items_on_string_error", "{% for k, v in s|items %}{% endfor %}", {"s": "abc"}),
    ("string_plus_int_error", "{{ 'a' + 1 }}", {}),
    ("raw_and_comments", "{# comment #}a{% raw %}{{ not parsed }}{% endraw %}b{#- trimmed -#}  c", {}),
    ("literals", "{{ [1, 'two', [3]] }} {{ {'k': 'v', 'n': 1} }} {{ (1, 2)|length }} {{ 'con' 'cat' }} "
                 "{{ 'esc\\t\\u00e9\\x41' }} {{ 1_000 }} {{ 1e3 }}", {}),
    ("dict_global", "{% set d = dict(a=1, b='x') %}{{ d.a }}{{ d['b'] }}{{ d|tojson }}", {}),
    ("generation_tag", "{% generation %}gen{{ 1 }}{% endgeneration %}", {}),
    ("undefined_semantics", "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}"
                            "{% endif %}{{ add_generation_prompt }} {{ 'a' in nope }} {{ nope|length }} "
                            "[{{ nope ~ 'x' }}] {{ nope == none }} {{ nope|default('d') }} {{ nope|first is defined }} "
                            "[{% for x in nope %}{{ x }}{% endfor %}] {{ nope is iterable }} [{{ nope|trim }}]", {}),
    ("special_tokens_style", "{{ bos_token }}{% for m in messages %}{{ '[' + m['role'] | upper + '] ' + m['content']"
                             " | trim }}{% if not loop.last %}\n{% endif %}{% endfor %}{{ eos_token }}",
     {"bos_token": "<s>", "eos_token": "</s>", "messages": [{"role": "user", "content": " hi "},
                                                            {"role": "assistant", "content": "yo\n"}]}),
    ("nested_loops_and_namespace_in_macro",
     "{% set counter = namespace(n=0) %}{% macro bump(k) %}{% set counter.n = counter.n + k %}{% endmacro %}"
     "{% for row in rows %}{% for v in row %}{{ bump(v) }}{{ loop.index }}.{% endfor %}|{{ loop.index }}"
     "{% endfor %} total={{ counter.n }}", {"rows": [[1, 2], [3], []]}),
]


def render_features():
    out = []
    for name, template, context in FEATURES:
        entry = {"name": name, "template": template, "context": context}
        try:
            entry["expected"] = _compile_jinja_template(template).render(**copy.deepcopy(context))
        except Exception as e:
            entry["error"] = str(e)
            entry["error_type"] = type(e).__name__
        out.append(entry)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    args = ap.parse_args()
    with open(os.path.join(FIXTURES, "qwen3.5-moe.jinja"), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != QWEN35_SHA256:
        sys.exit(f"qwen3.5-moe.jinja: SHA256 {digest} differs from the published {QWEN35_SHA256}")
    outputs = {
        "qwen3.5-moe.cases.json": render_cases("qwen3.5-moe.jinja"),
        "qwen3-moe.cases.json": render_cases("qwen3-moe.jinja"),
        "qwen3-coder.cases.json": render_cases("qwen3-coder.jinja"),
        "jinja_features.json": {"features": render_features()},
    }
    bad = 0
    for fname, data in outputs.items():
        text = json.dumps(data, ensure_ascii=False, indent=1) + "\n"
        path = os.path.join(FIXTURES, fname)
        if args.check:
            with open(path, encoding="utf-8") as f:
                if f.read() != text:
                    print(f"{path}: differs from what the reference renders now")
                    bad += 1
        else:
            tmp = path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
            print(f"wrote {path}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
