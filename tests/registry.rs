//! The registry of pruning methods: every registered name parses (in any case), prints as
//! itself, survives serde and the saved settings of a run, and is listed by the error for an
//! unknown name and by the help text; rules' keys are unique.

use cactus::compress::{prune_help, prune_names, PruneMethod, PRUNE_RULES};
use cactus::train::CactusConfig;
use std::collections::{BTreeSet, HashSet};

#[test]
fn every_registered_name_round_trips() {
    let listed: Vec<PruneMethod> = PruneMethod::listed().collect();
    let names: usize = PRUNE_RULES.iter().map(|r| r.names().len()).sum();
    assert_eq!(listed.len(), names);
    assert!(names >= 8, "the eight magnitude methods at least");
    for method in &listed {
        let name = method.to_string();
        assert_eq!(name, method.name());
        assert!(
            method.rule().names().contains(&name.as_str()),
            "{name} prints differently from its listed name"
        );
        for spelling in [name.clone(), name.to_uppercase(), format!("  {name}\t")] {
            let parsed: PruneMethod = spelling.parse().unwrap();
            assert_eq!(parsed, *method, "{spelling:?}");
        }
        // serde: the name as a JSON string, both ways.
        let json = serde_json::to_string(method).unwrap();
        assert_eq!(json, format!("\"{name}\""));
        let back: PruneMethod = serde_json::from_str(&json).unwrap();
        assert_eq!(back, *method);
        // A run's saved settings.
        let cfg = CactusConfig {
            prune_method: *method,
            ..CactusConfig::default()
        };
        let text = serde_json::to_string(&cfg).unwrap();
        assert!(
            text.contains(&format!("\"prune_method\":\"{name}\"")),
            "{text}"
        );
        let back: CactusConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(back.prune_method, *method);
        // A fixed ratio, where there is one, is a pruning ratio.
        if let Some(r) = method.implied_ratio() {
            assert!((0.0..1.0).contains(&r), "{name} fixes the ratio {r}");
            assert_eq!(method.ratio(None).unwrap(), r);
        } else {
            assert!(method.ratio(None).is_err());
            assert_eq!(method.ratio(Some(0.3)).unwrap(), 0.3);
        }
    }
    // Distinct names are distinct methods, hashed apart.
    let set: HashSet<PruneMethod> = listed.iter().copied().collect();
    assert_eq!(set.len(), listed.len());
}

#[test]
fn rules_have_unique_keys_and_names() {
    let keys: BTreeSet<&str> = PRUNE_RULES.iter().map(|r| r.key()).collect();
    assert_eq!(keys.len(), PRUNE_RULES.len());
    let mut names = BTreeSet::new();
    for rule in PRUNE_RULES {
        assert!(!rule.names().is_empty(), "{} lists no name", rule.key());
        assert!(!rule.help().is_empty());
        for name in rule.names() {
            assert!(names.insert(*name), "{name} is listed twice");
            assert_eq!(
                name.to_lowercase(),
                *name,
                "{name}: listed names are lower case"
            );
            // No other rule claims the name.
            for other in PRUNE_RULES.iter().filter(|o| o.key() != rule.key()) {
                assert!(matches!(other.parse(name), Ok(None)), "{name}");
            }
        }
    }
}

#[test]
fn unknown_names_are_errors_listing_the_registry() {
    let help = prune_help();
    let listing = prune_names();
    for method in PruneMethod::listed() {
        let name = method.to_string();
        assert!(help.contains(&name) && listing.contains(&name), "{name}");
    }
    for rule in PRUNE_RULES {
        assert!(help.contains(rule.help()));
    }
    for bad in ["", "gul3", "xsl1", "none", "g u l 1"] {
        let err = bad.parse::<PruneMethod>().unwrap_err().to_string();
        assert!(err.contains(&format!("{bad:?}")), "{err}");
        assert!(err.contains(&listing), "{err}");
    }
    assert!(serde_json::from_str::<PruneMethod>("\"gul3\"").is_err());
}

#[test]
fn saved_settings_of_earlier_versions_still_load() {
    // A run's settings as earlier versions wrote them.
    let text = r#"{"compress":"prune","prune_method":"gsl2","strategy":"fixed","ratios":[0.5],
                   "samples":1,"awp":{"eta":0.5,"steps":1}}"#;
    let cfg: CactusConfig = serde_json::from_str(text).unwrap();
    assert_eq!(cfg.prune_method.to_string(), "gsl2");
    assert_eq!(CactusConfig::default().prune_method.to_string(), "gul1");
}
