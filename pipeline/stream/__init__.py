"""The Kafka driver: gateway -> Kafka -> Faust workers (the same topology) -> sink -> ClickHouse.

- `topics`: names, partitioning, creation;
- `records`: what a Kafka record carries (Avro, Confluent wire format);
- `ingest`: the gateway's IngestSink on Kafka (acks=all, idempotent producer);
- `reference`: customers, fences and devices on a compacted topic, read by every process;
- `worker`: the Faust app — agents run `Topology.process`/`tick`, state in a Faust table;
- `sink`: consumes the output topics and raw input into ClickHouse, commits after insert.
"""
