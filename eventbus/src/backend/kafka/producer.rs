//! Publishing: one idempotent `FutureProducer` (`acks=all`) per backend. A batch is enqueued
//! at once (librdkafka batches and compresses it per partition) and `publish` returns when
//! every record of it is acknowledged by the brokers.

use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureRecord, Producer as _};
use rdkafka::util::Timeout;

use rdkafka::message::Header;

use super::async_runtime::KafkaProducer;
use super::binary;
use super::config::{CloudEventsMode, KafkaConfig};
use super::record;
use crate::backend::Message;
use crate::error::Error;

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placed {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
}

pub(crate) struct Producer {
    inner: KafkaProducer,
    queue_timeout: Duration,
    binary: bool,
}

impl Producer {
    pub(crate) fn new(config: &KafkaConfig) -> Result<Self, Error> {
        let inner: KafkaProducer = config
            .producer_client_config()
            .create()
            .map_err(|e| config.config_error(e, "producer_options"))?;
        Ok(Producer {
            inner,
            queue_timeout: config.producer.delivery_timeout,
            binary: config.cloudevents == CloudEventsMode::Binary,
        })
    }

    /// The underlying rdkafka producer.
    pub(crate) fn rdkafka(&self) -> &KafkaProducer {
        &self.inner
    }

    /// Produces `messages` in order (same key, same partition, same order) and waits for every
    /// acknowledgement. On an error some records of the batch may be published: publishing the
    /// same envelopes again is safe, the consumers' inbox drops the duplicates.
    pub(crate) async fn send_all(&self, messages: &[Message]) -> Result<Vec<Placed>, Error> {
        let mut pending = Vec::with_capacity(messages.len());
        for message in messages {
            let started = Instant::now();
            // Binary mode: the value is `data`, the attributes go to `ce_*` headers.
            let binary = if self.binary {
                binary::encode(&message.payload)
            } else {
                None
            };
            loop {
                let (payload, headers) = match &binary {
                    Some((value, attributes)) => {
                        let mut headers = record::headers(message, false);
                        for (key, value) in attributes {
                            headers = headers.insert(Header {
                                key: key.as_str(),
                                value: Some(value.as_str()),
                            });
                        }
                        (&value[..], headers)
                    }
                    None => (&message.payload[..], record::headers(message, true)),
                };
                let mut record = FutureRecord::<str, [u8]>::to(&message.topic)
                    .payload(payload)
                    .headers(headers);
                if let Some(key) = &message.key {
                    record = record.key(&**key);
                }
                match self.inner.send_result(record) {
                    Ok(delivery) => {
                        pending.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                        if started.elapsed() < self.queue_timeout =>
                    {
                        // The local queue is full: wait for deliveries to make room.
                        crate::runtime::sleep(Duration::from_millis(5)).await;
                    }
                    Err((error, _)) => return Err(produce_error(&message.topic, error)),
                }
            }
        }
        let mut placed = Vec::with_capacity(pending.len());
        for (delivery, message) in pending.into_iter().zip(messages) {
            match delivery.await {
                Ok(Ok(d)) => placed.push(Placed {
                    partition: d.partition,
                    offset: d.offset,
                }),
                Ok(Err((error, _))) => return Err(produce_error(&message.topic, error)),
                Err(_) => {
                    return Err(Error::backend(
                        "kafka",
                        "produce",
                        "the producer was dropped",
                    ))
                }
            }
        }
        Ok(placed)
    }

    /// Waits until every enqueued record is delivered (or `timeout` passes).
    pub(crate) fn flush(&self, timeout: Duration) -> Result<(), Error> {
        self.inner
            .flush(Timeout::After(timeout))
            .map_err(|e| Error::backend("kafka", "flush", e))
    }
}

fn produce_error(topic: &str, error: KafkaError) -> Error {
    Error::backend("kafka", "produce", format!("topic `{topic}`: {error}"))
}
