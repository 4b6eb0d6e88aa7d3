//! Raw HTTP request bytes through squib's router into every body parser: the request line and
//! headers are split as an HTTP/1.1 parser does, the body is what follows the head, and the
//! route table parses it into a VMM action or a 400. Inputs that are not HTTP pick a route from
//! the spec's table by their first byte, so every body parser is reached either way.
#![no_main]

use libfuzzer_sys::fuzz_target;
use squib_api::parse_request;

const ROUTES: &[(&str, &str)] = &[
    ("PUT", "/actions"),
    ("PUT", "/balloon"),
    ("PATCH", "/balloon"),
    ("PATCH", "/balloon/statistics"),
    ("PATCH", "/balloon/hinting/start"),
    ("PATCH", "/balloon/hinting/stop"),
    ("PUT", "/boot-source"),
    ("PUT", "/cpu-config"),
    ("PUT", "/drives/rootfs"),
    ("PATCH", "/drives/rootfs"),
    ("PUT", "/pmem/p0"),
    ("PATCH", "/pmem/p0"),
    ("PUT", "/logger"),
    ("PUT", "/serial"),
    ("PUT", "/machine-config"),
    ("PATCH", "/machine-config"),
    ("PUT", "/metrics"),
    ("PUT", "/mmds"),
    ("PATCH", "/mmds"),
    ("PUT", "/mmds/config"),
    ("PUT", "/network-interfaces/eth0"),
    ("PATCH", "/network-interfaces/eth0"),
    ("PUT", "/snapshot/create"),
    ("PUT", "/snapshot/load"),
    ("PATCH", "/vm"),
    ("PUT", "/vsock"),
    ("PUT", "/entropy"),
    ("PUT", "/hotplug/memory"),
    ("PATCH", "/hotplug/memory"),
    ("GET", "/"),
    ("GET", "/vm/config"),
    ("GET", "/mmds"),
    ("DELETE", "/drives/rootfs"),
];

fuzz_target!(|data: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    if let Ok(httparse::Status::Complete(head)) = request.parse(data)
        && let (Some(method), Some(path)) = (request.method, request.path)
    {
        let _ = parse_request(method, path, &data[head..]);
        return;
    }
    if let Some((&pick, body)) = data.split_first() {
        let (method, path) = ROUTES[usize::from(pick) % ROUTES.len()];
        let _ = parse_request(method, path, body);
    }
});
