"""micd.toolconfig: the generated bazelrc (content, mode 0600, atomic replace, removal)."""

from __future__ import annotations

import stat

import pytest

from micd.toolconfig import bazelrc_text, remove_tool_configs, write_bazelrc


def test_bazelrc_names_the_daemon_and_token(tmp_path):
    path = write_bazelrc(tmp_path, grpc_port=1234, http_port=5678, token="tok-en_1")
    text = path.read_text()
    assert "build --remote_cache=grpc://127.0.0.1:1234\n" in text
    assert 'build "--remote_header=Authorization=Bearer tok-en_1"\n' in text
    assert "build:mic-http --remote_cache=http://127.0.0.1:5678\n" in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    write_bazelrc(tmp_path, grpc_port=1, http_port=2, token="t")
    assert "grpc://127.0.0.1:1\n" in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["bazelrc"]  # no temp file left behind
    remove_tool_configs(tmp_path)
    remove_tool_configs(tmp_path)
    assert not path.exists()


@pytest.mark.parametrize("token", ["", "a b", "a\nbuild --x", 'q"'])
def test_tokens_that_would_break_the_file_are_refused(token):
    with pytest.raises(ValueError):
        bazelrc_text(grpc_port=1, http_port=2, token=token)


def test_instance_name_line():
    assert "build --remote_instance_name=main/inst\n" in bazelrc_text(
        grpc_port=1, http_port=2, token="t", instance_name="main/inst"
    )
