//! The limits the seed configuration (`tests/fixtures/policy/valid/seed.yaml`, also as a
//! ConfigMap manifest and a ConfigMap mount) sets, as `explain --json` reports them: one table
//! for every test that explains the seed.

/// What `explain` answers for one repository under the seed.
#[derive(Clone, Copy, Debug)]
pub struct SeedLimits {
    pub repository: &'static str,
    /// The rule that applies, `(index, path)`; `None` for the global limits.
    pub rule: Option<(u64, &'static str)>,
    pub max_bytes: u64,
    /// `max_image_size` as the configuration writes it.
    pub max_display: &'static str,
    pub tag_count_limit: u64,
}

/// One repository per rule of the seed, in rule order, then one under the global limits.
pub const SEED_LIMITS: [SeedLimits; 4] = [
    SeedLimits {
        repository: "project-1/app",
        rule: Some((0, "^project-1/.*")),
        max_bytes: 20 << 20,
        max_display: "20MB",
        tag_count_limit: 3,
    },
    SeedLimits {
        repository: "project-2/big-image",
        rule: Some((1, "^project-2/big-image/.*")),
        max_bytes: 5 << 30,
        max_display: "5GB",
        tag_count_limit: 200,
    },
    SeedLimits {
        repository: "project-2/api",
        rule: Some((2, "^project-2/.*")),
        max_bytes: 50 << 20,
        max_display: "50MB",
        tag_count_limit: 10,
    },
    SeedLimits {
        repository: "library/nginx",
        rule: None,
        max_bytes: 100 << 20,
        max_display: "100MB",
        tag_count_limit: 100,
    },
];

impl SeedLimits {
    /// Asserts that `explained`, the object `explain --json` printed for this repository, gives
    /// these limits; `at` names the case in every failure.
    pub fn assert_explained(&self, explained: &serde_json::Value, at: &str) {
        let v = explained;
        assert_eq!(v["repository"], self.repository, "{at}");
        match self.rule {
            Some((index, path)) => {
                assert_eq!(v["rule"]["index"], index, "{at}");
                assert_eq!(v["rule"]["path"], path, "{at}");
            }
            None => assert!(v["rule"].is_null(), "{at}"),
        }
        assert_eq!(v["max_image_size"]["bytes"], self.max_bytes, "{at}");
        assert_eq!(v["max_image_size"]["display"], self.max_display, "{at}");
        assert_eq!(v["tag_count_limit"], self.tag_count_limit, "{at}");
    }
}
