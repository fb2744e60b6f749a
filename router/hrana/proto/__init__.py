"""Hrana's protobuf schema (the .proto files here) and the modules protoc generates from it.

The generated `*_pb2.py` and `*_pb2.pyi` are checked in, so the server needs only the
`protobuf` runtime; `generate.py` rebuilds them with grpcio-tools (a dev dependency), and a
test checks that doing so changes nothing.
"""
