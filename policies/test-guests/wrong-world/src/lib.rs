//! Test guest `wrong-world`: a fine component of a world appsnap does not know.

wit_bindgen::generate!({ world: "greeter", path: "wit" });

struct G;

impl Guest for G {
    fn hello() -> String {
        "hello".into()
    }
}

export!(G);
