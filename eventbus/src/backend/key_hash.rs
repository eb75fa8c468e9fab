//! Which partition a partition key goes to, as the producers of each platform compute it, so
//! that one key's history is read from its partition only.
//!
//! - murmur2: Kafka's default partitioner (Java clients; librdkafka's `murmur2_random`), and
//!   the Redis backend's: 32-bit murmur2 of the key's UTF-8 bytes (seed `0x9747b28c`), its
//!   sign bit cleared, modulo the partition count. A key maps to the same partition number on
//!   Redis as on a Kafka topic with as many partitions.
//! - CRC-32: librdkafka's default (`consistent_random`), the IEEE CRC-32 of the key modulo the
//!   partition count.

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition of `key` among `partitions` (Kafka's `toPositive(murmur2(key)) % n`).
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    if partitions <= 1 {
        return 0;
    }
    (murmur2(key.as_bytes()) & 0x7fff_ffff) % partitions
}

/// librdkafka's `consistent` partitioner: the IEEE CRC-32 of the key modulo the count.
#[cfg(feature = "kafka")]
pub(crate) fn crc32_partition_of(key: &str, partitions: u32) -> u32 {
    if partitions <= 1 {
        return 0;
    }
    crc32fast::hash(key.as_bytes()) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values of Kafka's own `Utils.murmur2` (from its `UtilsTest`), and partitions as its
    /// default partitioner computes them.
    #[test]
    fn matches_kafkas_murmur2() {
        let cases: &[(&str, i32)] = &[
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            ("abc", 479470107),
        ];
        for (key, expected) in cases {
            assert_eq!(
                murmur2(key.as_bytes()) as i32,
                *expected,
                "murmur2({key:?})"
            );
        }
        assert_eq!(
            partition_of("21", 16),
            (-973932308i32 & 0x7fff_ffff) as u32 % 16
        );
        assert_eq!(partition_of("anything", 1), 0);
    }

    #[cfg(feature = "kafka")]
    #[test]
    fn crc32_is_the_ieee_checksum() {
        // The check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32fast::hash(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32_partition_of("123456789", 7), 0xcbf4_3926 % 7);
    }
}
