//! [`RedisBroker`]: fan-out across instances through Redis Pub/Sub.
