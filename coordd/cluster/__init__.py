"""A cluster of coordd nodes that forward messages to each other's agents through NATS JetStream.

Loaded only with a [cluster] table (the only package that imports nats-py). docs/cluster.md describes the path
of a remote message and what each guarantee rests on. `link` connects to NATS; `directory` keeps the agents of
every node in a key-value bucket; `forwarding` moves messages and receipts between nodes; `node` puts them
together for the daemon.
"""
