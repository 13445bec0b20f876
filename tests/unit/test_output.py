"""The CLI's shared output (submitter/output.py) and job-file merging (submitter/jobspec_input.py):
pure logic, checked against an independent YAML reader (PyYAML) and click's own runner."""

from __future__ import annotations

import json
from typing import Any

import click
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from submitter import jobspec_input, output

yaml = pytest.importorskip("yaml")  # the reader the test trusts; the CLI writes YAML itself

scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
           | st.text(alphabet=" \n\t#:-'\"ab\x85\u2028\ufeff"))
json_like = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


class TestYaml:
    @settings(max_examples=400, deadline=None)
    @given(json_like)
    def test_any_json_like_value_reads_back_the_same(self, value: Any) -> None:
        assert yaml.safe_load(output.to_yaml(value)) == value

    @pytest.mark.parametrize("text", ["yes", "No", "null", "~", "true", "1.0", "0755", "2026-12-02",
                                      "a: b", "x #y", "- item", "", " lead", "trail ", "@at", "*ref"])
    def test_strings_yaml_would_read_as_something_else_are_quoted(self, text: str) -> None:
        assert output.to_yaml({"k": text}) == f"k: {json.dumps(text)}\n"
        assert yaml.safe_load(output.to_yaml(text)) == text

    def test_block_style_people_can_read(self) -> None:
        data = {"id": "j-1", "attempts": [{"number": 1, "node": None}], "tail": "a\nb\n", "args": {},
                "big": 1e20}
        assert output.to_yaml(data) == (
            "id: j-1\nattempts:\n  - number: 1\n    node: null\ntail: |\n  a\n  b\nargs: {}\nbig: 1.0e+20\n")


ROWS = ({"id": "a", "spec": {"queue": "default"}, "note": None},
        {"id": "bbbbbb", "spec": {"queue": "q"}, "note": "x\ny " * 20})


class TestTable:
    rows = ROWS

    def test_a_header_then_aligned_rows_and_the_last_column_unpadded(self) -> None:
        cols = [output.Column("ID", "id"), output.Column("QUEUE", "spec.queue"),
                output.Column("NOTE", "note", max_width=10)]
        assert output.render(list(self.rows), "table", columns=cols) == (
            "ID      QUEUE    NOTE\n"
            "a       default  -\n"
            "bbbbbb  q        x y x y x…\n")

    def test_no_rows_is_the_header_alone(self) -> None:
        assert output.render([], "table", columns=["id", "queue"]) == "ID  QUEUE\n"

    def test_one_object_is_field_and_value(self) -> None:
        assert output.render({"job_id": "a", "output": {"x": 1}, "ok": True}, "table") == (
            'FIELD   VALUE\njob_id  a\noutput  {"x": 1}\nok      true\n')

    def test_json_and_yaml_hold_every_field_whatever_the_columns(self) -> None:
        rows = list(self.rows)
        assert json.loads(output.render(rows, "json", columns=["id"])) == rows
        assert yaml.safe_load(output.render(rows, "yaml", columns=["id"])) == rows


def test_output_option_and_the_hidden_json_alias() -> None:
    @click.command()
    @output.output_option(json_alias=True)
    def show(output_format: str) -> None:
        output.emit({"a": [1, 2]}, output_format, columns=["a"], text=lambda: ["human"])

    runner = CliRunner()
    assert runner.invoke(show, []).output == "human\n"
    assert runner.invoke(show, ["-o", "yaml"]).output == "a:\n  - 1\n  - 2\n"
    assert json.loads(runner.invoke(show, ["--json"]).output) == {"a": [1, 2]}
    assert json.loads(runner.invoke(show, ["--output", "json"]).output) == {"a": [1, 2]}
    assert "--json" not in runner.invoke(show, ["--help"]).output
    assert runner.invoke(show, ["-o", "xml"]).exit_code == 2


class TestSpecFields:
    def fields(self, from_file: dict[str, Any], *, program: tuple[str, ...] = (),
               command: tuple[str, ...] = (), max_attempts: int | None = None, cpu: float | None = None,
               **options: Any) -> dict[str, Any]:
        return jobspec_input.spec_fields(from_file, program=program, command=command, options=options,
                                         cpu=cpu, memory=None, gpu=None, max_attempts=max_attempts)

    def test_options_given_override_the_file_and_others_leave_it_alone(self) -> None:
        got = self.fields({"task": "demo.sleep", "queue": "q", "priority": 5, "retry": {"backoff_base_s": 2}},
                          queue=None, priority=7, max_attempts=4)
        assert got == {"task": "demo.sleep", "queue": "q", "priority": 7,
                       "retry": {"backoff_base_s": 2, "max_attempts": 4}}

    def test_a_program_replaces_the_files_task_and_a_task_its_command(self) -> None:
        assert self.fields({"task": "demo.sleep"}, program=("echo", "--x")) == {"command": ["echo", "--x"]}
        assert self.fields({"command": ["echo"]}, task="demo.sleep") == {"task": "demo.sleep"}
        assert self.fields({}, command=("echo", "hi")) == {"command": ["echo", "hi"]}

    @pytest.mark.parametrize("kwargs", [{"program": ("a",), "command": ("b",)},
                                        {"program": ("a",), "task": "demo.sleep"},
                                        {"command": ("a",), "task": "demo.sleep"}])
    def test_two_ways_to_say_what_runs_is_a_usage_error(self, kwargs: dict[str, Any]) -> None:
        with pytest.raises(click.UsageError):
            self.fields({}, **kwargs)
