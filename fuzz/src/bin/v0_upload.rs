//! AFL entry point of [`fuzz::v0_upload`].

fn main() {
    afl::fuzz!(|data: &[u8]| {
        fuzz::v0_upload(data);
    });
}
