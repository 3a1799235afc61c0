//! The HTTP/1 codec: request and response heads ([`head`]: parsed where they lie, checked
//! against request smuggling, framed) and message bodies ([`body`]: decoded by their framing
//! and re-framed for the other side). No I/O and no proxy policy: the client side
//! (`http1/`), the upstream side (`upstream/`) and HTTP/2's upstream requests use it, and the
//! fuzz targets drive it directly.
pub mod body;
pub mod head;
