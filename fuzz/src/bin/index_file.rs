//! AFL entry point of [`fuzz::index_file`].

fn main() {
    afl::fuzz!(|data: &[u8]| {
        fuzz::index_file(data);
    });
}
