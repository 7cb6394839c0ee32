"""Kafka in and out: the feedback topic as a source, a producer, topic ranges for replays."""

from streaming.kafka.client import client_options, to_record, warn_if_slow_crc
from streaming.kafka.sink import KafkaSink
from streaming.kafka.source import KafkaSource

__all__ = ["KafkaSink", "KafkaSource", "client_options", "to_record", "warn_if_slow_crc"]
