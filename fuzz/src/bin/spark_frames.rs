//! AFL entry point of [`fuzz::spark_frames`].

fn main() {
    afl::fuzz!(|data: &[u8]| {
        fuzz::spark_frames(data);
    });
}
