"""Unit tests for dlcloud.protos: compiling .proto files and importing the stubs.

Generated modules register in protobuf's process-wide descriptor pool, so every test
uses its own file name and package.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dlcloud.protos import (
    CompiledProto,
    ProtoCompileError,
    compile_protos,
    module_stem,
    well_known_protos_dir,
)

LAB7_PROTO = (
    Path(__file__).resolve().parents[1] / "solutions" / "lab7-grpc-serving" / "quote_service.proto"
)

GREETER = """
syntax = "proto3";
package dlcloud.test.{pkg};
import "google/protobuf/timestamp.proto";
message Hello {{ string name = 1; int32 times = 2; google.protobuf.Timestamp at = 3; }}
message Reply {{ string text = 1; }}
service Greeter {{
  rpc Greet(Hello) returns (Reply);
  rpc GreetMany(Hello) returns (stream Reply);
}}
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_well_known_protos_are_shipped_with_grpc_tools():
    assert (well_known_protos_dir() / "google" / "protobuf" / "timestamp.proto").is_file()


def test_module_stem_follows_protoc_naming():
    assert module_stem(Path("quote-service.proto")) == "quote_service"
    assert module_stem(Path("/x/y/plain.proto")) == "plain"


def test_compile_generates_importable_messages_and_stubs(tmp_path):
    proto = write(tmp_path, "greeter_one.proto", GREETER.format(pkg="one"))
    compiled = compile_protos(proto)
    assert isinstance(compiled, CompiledProto)
    assert {p.name for p in compiled.files} == {
        "greeter_one_pb2.py", "greeter_one_pb2_grpc.py", "greeter_one_pb2.pyi"
    }
    hello = compiled.pb2.Hello(name="ada", times=3)
    hello.at.FromSeconds(60)
    again = compiled.pb2.Hello.FromString(hello.SerializeToString())
    assert again == hello and again.at.seconds == 60
    assert hasattr(compiled.pb2_grpc, "GreeterStub")
    assert hasattr(compiled.pb2_grpc, "GreeterServicer")
    assert hasattr(compiled.pb2_grpc, "add_GreeterServicer_to_server")
    assert compiled.service_names() == ["dlcloud.test.one.Greeter"]


def test_out_dir_is_created_and_put_on_sys_path(tmp_path):
    import sys

    proto = write(tmp_path, "greeter_two.proto", GREETER.format(pkg="two"))
    out = tmp_path / "generated" / "deep"
    compiled = compile_protos(proto, out_dir=out, pyi=False)
    assert all(p.parent == out for p in compiled.files)
    assert not (out / "greeter_two_pb2.pyi").exists()
    assert str(out) in sys.path
    assert Path(compiled.pb2.__file__).parent == out


def test_compiling_twice_is_harmless(tmp_path):
    proto = write(tmp_path, "greeter_three.proto", GREETER.format(pkg="three"))
    first = compile_protos(proto)
    second = compile_protos(proto)
    assert second.pb2.Hello(name="x").name == "x"
    assert first.service_names() == second.service_names()


def test_include_dirs_resolve_imports_of_own_protos(tmp_path):
    common = tmp_path / "common"
    common.mkdir()
    write(common, "money_four.proto", 'syntax = "proto3"; package dlcloud.test.four; '
          "message Money { string currency = 1; int64 cents = 2; }")
    api = tmp_path / "api"
    api.mkdir()
    proto = write(api, "price_four.proto", 'syntax = "proto3"; package dlcloud.test.four; '
                  'import "money_four.proto"; message Price { Money amount = 1; }')
    with pytest.raises(ProtoCompileError, match="money_four.proto"):
        compile_protos(proto)
    compile_protos(common / "money_four.proto")
    compiled = compile_protos(proto, include_dirs=[common])
    assert compiled.pb2.Price().amount.cents == 0
    assert compiled.service_names() == []


def test_bad_schema_raises_with_protoc_message(tmp_path):
    proto = write(tmp_path, "broken_five.proto",
                  'syntax = "proto3"; message A { string x = 1; int32 y = 1; }')
    with pytest.raises(ProtoCompileError) as error:
        compile_protos(proto)
    assert "broken_five.proto" in str(error.value)
    assert "already used" in str(error.value) or "1" in str(error.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.proto"):
        compile_protos(tmp_path / "nope.proto")


@pytest.mark.skipif(not LAB7_PROTO.exists(), reason="lab 7 is not in this checkout")
def test_lab7_quote_service_compiles(tmp_path):
    compiled = compile_protos(LAB7_PROTO, out_dir=tmp_path)
    assert compiled.service_names() == ["dlcloud.quotes.v1.QuoteService"]
    request = compiled.pb2.QuoteRequest(payout_cents=20_000)
    request.flight.origin = "JFK"
    assert compiled.pb2.QuoteRequest.FromString(request.SerializeToString()) == request
