//! AFL entry point of [`fuzz::sasl`].

fn main() {
    afl::fuzz!(|data: &[u8]| {
        fuzz::sasl(data);
    });
}
