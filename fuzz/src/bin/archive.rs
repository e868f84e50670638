//! AFL entry point of [`fuzz::archive`].

fn main() {
    afl::fuzz!(|data: &[u8]| {
        fuzz::archive(data);
    });
}
