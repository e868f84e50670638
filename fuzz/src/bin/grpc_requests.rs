//! AFL entry point of [`fuzz::grpc_requests`].

fn main() {
    afl::fuzz!(|data: &[u8]| {
        fuzz::grpc_requests(data);
    });
}
