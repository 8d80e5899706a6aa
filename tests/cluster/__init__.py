"""Local sse-cluster for tests and for people.

`harness` starts and controls the processes (a 3-server NATS JetStream
cluster, N sse-node processes, sse-admin when built, HAProxy in front);
`sse` is an EventSource-like asyncio client; `tcp_proxy` sits between one node
and NATS so a test can cut it off; `workload` holds the publisher, the client
fleet and the figures every chaos test prints.
"""
