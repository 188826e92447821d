"""Domain logic of Berth: pure Python, no gRPC or protobuf imports."""
