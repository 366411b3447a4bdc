//! fcm-agent: placeholder, replaced by the real agent.
fn main() {
    println!("fcm-agent {}", fcm_proto::VERSION);
}
