//! AFL entry point of [`fuzz::spark_messages`].

fn main() {
    afl::fuzz!(|data: &[u8]| {
        fuzz::spark_messages(data);
    });
}
