//! AFL entry point of [`fuzz::spark_crypto`].

fn main() {
    afl::fuzz!(|data: &[u8]| {
        fuzz::spark_crypto(data);
    });
}
