//! AFL entry point of [`fuzz::ids`].

fn main() {
    afl::fuzz!(|data: &[u8]| {
        fuzz::ids(data);
    });
}
