//! AFL entry point of [`fuzz::checksum_files`].

fn main() {
    afl::fuzz!(|data: &[u8]| {
        fuzz::checksum_files(data);
    });
}
