//! The simulated directory of one tenant: generated mailboxes (with their users), mail users
//! created at run time, and accepted domains. Everything generated is deterministic in the tenant
//! domain and the object's index, so two runs (and two simulators) agree on names and GUIDs.

use crate::remote::{PsObject, PsValue};
use sha2::{Digest, Sha256};
use uuid::Uuid;

const FIRST_NAMES: [&str; 20] = [
    "Adele",
    "Alex",
    "Allan",
    "Brian",
    "Christie",
    "Debra",
    "Diego",
    "Emily",
    "Enrico",
    "Grady",
    "Henrietta",
    "Isaiah",
    "Johanna",
    "Joni",
    "Lee",
    "Lidia",
    "Lynne",
    "Megan",
    "Miriam",
    "Nestor",
];
const LAST_NAMES: [&str; 20] = [
    "Vance",
    "Wilber",
    "Deyoung",
    "Johnson",
    "Cline",
    "Berger",
    "Siciliani",
    "Braun",
    "Cattaneo",
    "Archie",
    "Mueller",
    "Langer",
    "Lorenz",
    "Sherman",
    "Gu",
    "Holloway",
    "Robbins",
    "Bowen",
    "Graham",
    "Wilke",
];
const OFFICES: [&str; 6] = ["18/2111", "131/1104", "20/1101", "19/3123", "32/1150", "24/1106"];
const DEPARTMENTS: [&str; 8] = ["Sales", "Marketing", "Finance", "Engineering", "Operations", "Legal", "HR", "Retail"];
const TITLES: [&str; 5] = ["Analyst", "Manager", "Engineer", "Director", "Specialist"];
const CITIES: [&str; 5] = ["Redmond", "Seattle", "Bellevue", "Tacoma", "Spokane"];

/// The forest every simulated object lives in (shows up in DNs and in "couldn't be found on" texts).
pub const FOREST: &str = "NAMPR01A001.prod.outlook.com";
/// The domain controller named in "object couldn't be found on '…'" errors.
pub const DOMAIN_CONTROLLER: &str = "SIMPR01A001DC01.NAMPR01A001.prod.outlook.com";
/// The server named in Exchange error ids.
pub const SERVER: &str = "SIMEXCH01";

/// 49.5 GB, the Exchange Online default ProhibitSendQuota.
pub const DEFAULT_PROHIBIT_SEND_QUOTA: u64 = 53_150_220_288;
/// 49 GB, the default IssueWarningQuota.
pub const DEFAULT_ISSUE_WARNING_QUOTA: u64 = 52_613_349_376;
/// 50 GB, the default ProhibitSendReceiveQuota.
pub const DEFAULT_PROHIBIT_SEND_RECEIVE_QUOTA: u64 = 53_687_091_200;

pub const MAILBOX_TYPES: &[&str] = &[
    "Deserialized.Microsoft.Exchange.Data.Directory.Management.Mailbox",
    "Deserialized.Microsoft.Exchange.Data.Directory.Management.MailEnabledOrgPerson",
    "Deserialized.Microsoft.Exchange.Data.Directory.Management.MailEnabledRecipient",
    "Deserialized.Microsoft.Exchange.Data.Directory.ADPresentationObject",
    "Deserialized.Microsoft.Exchange.Data.Directory.ConfigurableObject",
    "Deserialized.System.Object",
];
pub const MAIL_USER_TYPES: &[&str] = &[
    "Deserialized.Microsoft.Exchange.Data.Directory.Management.MailUser",
    "Deserialized.Microsoft.Exchange.Data.Directory.Management.MailEnabledOrgPerson",
    "Deserialized.Microsoft.Exchange.Data.Directory.Management.MailEnabledRecipient",
    "Deserialized.Microsoft.Exchange.Data.Directory.ADPresentationObject",
    "Deserialized.Microsoft.Exchange.Data.Directory.ConfigurableObject",
    "Deserialized.System.Object",
];
pub const USER_TYPES: &[&str] = &[
    "Deserialized.Microsoft.Exchange.Data.Directory.Management.User",
    "Deserialized.Microsoft.Exchange.Data.Directory.Management.OrgPersonPresentationObject",
    "Deserialized.Microsoft.Exchange.Data.Directory.ADPresentationObject",
    "Deserialized.Microsoft.Exchange.Data.Directory.ConfigurableObject",
    "Deserialized.System.Object",
];
pub const ACCEPTED_DOMAIN_TYPES: &[&str] = &[
    "Deserialized.Microsoft.Exchange.Data.Directory.SystemConfiguration.AcceptedDomain",
    "Deserialized.Microsoft.Exchange.Data.Directory.ADConfigurationObject",
    "Deserialized.Microsoft.Exchange.Data.Directory.ADObject",
    "Deserialized.Microsoft.Exchange.Data.Directory.ConfigurableObject",
    "Deserialized.System.Object",
];

/// A GUID derived from SHA-256 of the parts (stamped as a name-based, version 5 style UUID).
pub fn det_guid(parts: &[&str]) -> Uuid {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

/// Exchange's ByteQuantifiedSize text: "49.5 GB (53,150,220,288 bytes)".
pub fn format_quota(bytes: Option<u64>) -> String {
    let Some(bytes) = bytes else {
        return "Unlimited".to_string();
    };
    const UNITS: [(&str, u64); 4] = [("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)];
    let (unit, size) = UNITS.iter().find(|(_, size)| bytes >= *size).copied().unwrap_or(("B", 1));
    let value = bytes as f64 / size as f64;
    let mut shown = format!("{value:.3}");
    while shown.ends_with('0') {
        shown.pop();
    }
    if shown.ends_with('.') {
        shown.pop();
    }
    format!("{shown} {unit} ({} bytes)", group_thousands(bytes))
}

fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Parses a quota as Exchange accepts it: "Unlimited", a byte count, or a number with a unit
/// ("10GB", "500 MB", "1.5 GB", also the formatted "49.5 GB (53,150,220,288 bytes)").
/// `Ok(None)` is Unlimited.
pub fn parse_quota(text: &str) -> Result<Option<u64>, ()> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    // "… (N bytes)": trust the exact count.
    if let (Some(open), true) = (t.find('('), t.ends_with("bytes)")) {
        let inner: String = t[open + 1..t.len() - "bytes)".len()].chars().filter(|c| c.is_ascii_digit()).collect();
        return inner.parse().map(Some).map_err(|_| ());
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ',')).unwrap_or(t.len());
    let number: f64 = t[..split].replace(',', "").parse().map_err(|_| ())?;
    let unit = t[split..].trim().to_ascii_uppercase();
    let mult: u64 = match unit.as_str() {
        "" | "B" => 1,
        "KB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return Err(()),
    };
    if !(number.is_finite() && number >= 0.0) {
        return Err(());
    }
    let bytes = number * mult as f64;
    if bytes > u64::MAX as f64 / 2.0 {
        return Err(());
    }
    Ok(Some(bytes.round() as u64))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipientKind {
    Mailbox,
    MailUser,
}

/// One directory object. A mailbox and its user are the same object seen through two cmdlets.
#[derive(Debug, Clone)]
pub struct Recipient {
    pub kind: RecipientKind,
    pub name: String,
    pub alias: String,
    pub display_name: String,
    pub first_name: String,
    pub last_name: String,
    pub primary_smtp: String,
    pub upn: String,
    pub guid: Uuid,
    pub exchange_guid: Uuid,
    pub external_directory_object_id: Uuid,
    /// "SMTP:…" of a mail user's external address.
    pub external_email: Option<String>,
    pub office: String,
    pub department: String,
    pub title: String,
    pub city: String,
    pub custom: [String; 15],
    pub hidden: bool,
    /// "smtp:…" or None.
    pub forwarding_smtp: Option<String>,
    pub litigation_hold: bool,
    pub prohibit_send_quota: Option<u64>,
    pub issue_warning_quota: Option<u64>,
    pub prohibit_send_receive_quota: Option<u64>,
    pub when_created: String,
    pub when_changed: String,
}

impl Recipient {
    pub fn distinguished_name(&self, domain: &str) -> String {
        format!(
            "CN={},OU={},OU=Microsoft Exchange Hosted Organizations,DC=NAMPR01A001,DC=PROD,DC=OUTLOOK,DC=COM",
            self.name, domain
        )
    }

    /// Whether `identity` names this object, the way Exchange resolves an -Identity value.
    pub fn matches(&self, identity: &str, domain: &str) -> bool {
        let id = identity.trim();
        let id = id.strip_prefix("smtp:").or_else(|| id.strip_prefix("SMTP:")).unwrap_or(id);
        if let Ok(g) = Uuid::parse_str(id) {
            return g == self.guid || g == self.external_directory_object_id || g == self.exchange_guid;
        }
        [&self.name, &self.alias, &self.primary_smtp, &self.display_name, &self.upn]
            .iter()
            .any(|v| v.eq_ignore_ascii_case(id))
            || self.distinguished_name(domain).eq_ignore_ascii_case(id)
    }

    fn email_addresses(&self) -> PsValue {
        PsValue::List(vec![PsValue::String(format!("SMTP:{}", self.primary_smtp))])
    }

    fn common(&self, obj: PsObject) -> PsObject {
        obj.with("Name", self.name.clone())
            .with("Alias", self.alias.clone())
            .with("DisplayName", self.display_name.clone())
    }

    fn custom_attributes(&self, mut obj: PsObject) -> PsObject {
        for (i, value) in self.custom.iter().enumerate() {
            obj = obj.with(&format!("CustomAttribute{}", i + 1), value.clone());
        }
        obj
    }

    pub fn mailbox_object(&self, domain: &str) -> PsObject {
        let mut obj = PsObject::new(MAILBOX_TYPES);
        obj.to_string = Some(self.name.clone());
        obj = self
            .common(obj)
            .with("PrimarySmtpAddress", self.primary_smtp.clone())
            .with("UserPrincipalName", self.upn.clone())
            .with("EmailAddresses", self.email_addresses())
            .with("RecipientType", "UserMailbox")
            .with("RecipientTypeDetails", "UserMailbox")
            .with("Identity", self.name.clone())
            .with("Id", self.name.clone())
            .with("DistinguishedName", self.distinguished_name(domain))
            .with("OrganizationalUnit", format!("{FOREST}/Microsoft Exchange Hosted Organizations/{domain}"))
            .with("Guid", PsValue::Guid(self.guid))
            .with("ExchangeGuid", PsValue::Guid(self.exchange_guid))
            .with("ExternalDirectoryObjectId", self.external_directory_object_id.to_string())
            .with("Database", "NAMPR01DG001-db001")
            .with("IsMailboxEnabled", true)
            .with("Office", self.office.clone())
            .with("Department", self.department.clone());
        obj = self.custom_attributes(obj);
        obj.with("HiddenFromAddressListsEnabled", self.hidden)
            .with("ForwardingAddress", PsValue::Null)
            .with("ForwardingSmtpAddress", self.forwarding_smtp.clone().map(PsValue::String).unwrap_or(PsValue::Null))
            .with("DeliverToMailboxAndForward", false)
            .with("LitigationHoldEnabled", self.litigation_hold)
            .with("UseDatabaseQuotaDefaults", false)
            .with("ProhibitSendQuota", format_quota(self.prohibit_send_quota))
            .with("ProhibitSendReceiveQuota", format_quota(self.prohibit_send_receive_quota))
            .with("IssueWarningQuota", format_quota(self.issue_warning_quota))
            .with("ArchiveStatus", "None")
            .with("WhenCreated", PsValue::DateTime(self.when_created.clone()))
            .with("WhenChanged", PsValue::DateTime(self.when_changed.clone()))
    }

    pub fn mail_user_object(&self, domain: &str) -> PsObject {
        let mut obj = PsObject::new(MAIL_USER_TYPES);
        obj.to_string = Some(self.name.clone());
        obj = self
            .common(obj)
            .with("ExternalEmailAddress", self.external_email.clone().map(PsValue::String).unwrap_or(PsValue::Null))
            .with("PrimarySmtpAddress", self.primary_smtp.clone())
            .with("UserPrincipalName", self.upn.clone())
            .with("EmailAddresses", self.email_addresses())
            .with("RecipientType", "MailUser")
            .with("RecipientTypeDetails", "MailUser")
            .with("Identity", self.name.clone())
            .with("Id", self.name.clone())
            .with("DistinguishedName", self.distinguished_name(domain))
            .with("Guid", PsValue::Guid(self.guid))
            .with("ExternalDirectoryObjectId", self.external_directory_object_id.to_string())
            .with("HiddenFromAddressListsEnabled", self.hidden);
        obj = self.custom_attributes(obj);
        obj.with("WhenCreated", PsValue::DateTime(self.when_created.clone()))
            .with("WhenChanged", PsValue::DateTime(self.when_changed.clone()))
    }

    pub fn user_object(&self, domain: &str) -> PsObject {
        let kind = match self.kind {
            RecipientKind::Mailbox => "UserMailbox",
            RecipientKind::MailUser => "MailUser",
        };
        let mut obj = PsObject::new(USER_TYPES);
        obj.to_string = Some(self.name.clone());
        obj.with("Name", self.name.clone())
            .with("DisplayName", self.display_name.clone())
            .with("FirstName", self.first_name.clone())
            .with("LastName", self.last_name.clone())
            .with("UserPrincipalName", self.upn.clone())
            .with("WindowsEmailAddress", self.primary_smtp.clone())
            .with("RecipientType", kind)
            .with("RecipientTypeDetails", kind)
            .with("Title", self.title.clone())
            .with("Office", self.office.clone())
            .with("Department", self.department.clone())
            .with("City", self.city.clone())
            .with("Identity", self.name.clone())
            .with("Id", self.name.clone())
            .with("DistinguishedName", self.distinguished_name(domain))
            .with("Guid", PsValue::Guid(self.guid))
            .with("ExternalDirectoryObjectId", self.external_directory_object_id.to_string())
            .with("WhenCreated", PsValue::DateTime(self.when_created.clone()))
            .with("WhenChanged", PsValue::DateTime(self.when_changed.clone()))
    }

    /// A blank object of a kind, for checking which property names a filter may use.
    pub fn template(kind: RecipientKind) -> Recipient {
        let mut r = generate_mailbox("template.invalid", 1);
        r.kind = kind;
        r
    }
}

fn generate_mailbox(domain: &str, index: u32) -> Recipient {
    let i = (index - 1) as usize;
    let first = FIRST_NAMES[i % FIRST_NAMES.len()];
    let last = LAST_NAMES[(i / FIRST_NAMES.len()) % LAST_NAMES.len()];
    let display_name = if i < FIRST_NAMES.len() * LAST_NAMES.len() {
        format!("{first} {last}")
    } else {
        format!("{first} {last} {index}")
    };
    let name = format!("user{index:03}");
    let smtp = format!("{name}@{domain}");
    let idx = index.to_string();
    // Creation dates spread over 2021-2023, deterministic.
    let day = (i * 37) % 1000;
    let created = chrono::NaiveDate::from_ymd_opt(2021, 1, 4).expect("valid date") + chrono::Days::new(day as u64);
    let when = format!("{created}T09:{:02}:{:02}+00:00", i % 60, (i * 7) % 60);
    Recipient {
        kind: RecipientKind::Mailbox,
        alias: name.clone(),
        name,
        display_name,
        first_name: first.to_string(),
        last_name: last.to_string(),
        upn: smtp.clone(),
        primary_smtp: smtp,
        guid: det_guid(&[domain, "mailbox", &idx]),
        exchange_guid: det_guid(&[domain, "exchange", &idx]),
        external_directory_object_id: det_guid(&[domain, "user", &idx]),
        external_email: None,
        office: OFFICES[i % OFFICES.len()].to_string(),
        department: DEPARTMENTS[i % DEPARTMENTS.len()].to_string(),
        title: TITLES[i % TITLES.len()].to_string(),
        city: CITIES[i % CITIES.len()].to_string(),
        custom: Default::default(),
        hidden: false,
        forwarding_smtp: None,
        litigation_hold: false,
        prohibit_send_quota: Some(DEFAULT_PROHIBIT_SEND_QUOTA),
        issue_warning_quota: Some(DEFAULT_ISSUE_WARNING_QUOTA),
        prohibit_send_receive_quota: Some(DEFAULT_PROHIBIT_SEND_RECEIVE_QUOTA),
        when_changed: when.clone(),
        when_created: when,
    }
}

/// A new mail user as New-MailUser creates it.
pub fn new_mail_user(
    domain: &str,
    name: &str,
    alias: &str,
    display_name: &str,
    first: &str,
    last: &str,
    external: &str,
) -> Recipient {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
    let key = name.to_ascii_lowercase();
    let smtp = format!("{alias}@{domain}");
    Recipient {
        kind: RecipientKind::MailUser,
        name: name.to_string(),
        alias: alias.to_string(),
        display_name: display_name.to_string(),
        first_name: first.to_string(),
        last_name: last.to_string(),
        upn: smtp.clone(),
        primary_smtp: smtp,
        guid: det_guid(&[domain, "mailuser", &key]),
        exchange_guid: Uuid::nil(),
        external_directory_object_id: det_guid(&[domain, "mailuser-user", &key]),
        external_email: Some(format!("SMTP:{external}")),
        office: String::new(),
        department: String::new(),
        title: String::new(),
        city: String::new(),
        custom: Default::default(),
        hidden: false,
        forwarding_smtp: None,
        litigation_hold: false,
        prohibit_send_quota: None,
        issue_warning_quota: None,
        prohibit_send_receive_quota: None,
        when_changed: now.clone(),
        when_created: now,
    }
}

/// An accepted domain of a tenant.
#[derive(Debug, Clone)]
pub struct AcceptedDomain {
    pub name: String,
    pub default: bool,
}

impl AcceptedDomain {
    pub fn object(&self, tenant: &str) -> PsObject {
        let mut obj = PsObject::new(ACCEPTED_DOMAIN_TYPES);
        obj.to_string = Some(self.name.clone());
        obj.with("Name", self.name.clone())
            .with("DomainName", self.name.clone())
            .with("DomainType", "Authoritative")
            .with("Default", self.default)
            .with("InitialDomain", self.name.to_ascii_lowercase().ends_with(".onmicrosoft.com"))
            .with("MatchSubDomains", false)
            .with("IsValid", true)
            .with("Identity", self.name.clone())
            .with("Guid", PsValue::Guid(det_guid(&[tenant, "accepted-domain", &self.name.to_ascii_lowercase()])))
    }

    pub fn matches(&self, identity: &str) -> bool {
        self.name.eq_ignore_ascii_case(identity.trim())
    }
}

/// The directory of one tenant.
#[derive(Debug, Clone)]
pub struct TenantData {
    pub domain: String,
    pub recipients: Vec<Recipient>,
    pub accepted_domains: Vec<AcceptedDomain>,
}

impl TenantData {
    pub fn generate(domain: &str, mailboxes: u32) -> TenantData {
        TenantData {
            domain: domain.to_string(),
            recipients: (1..=mailboxes).map(|i| generate_mailbox(domain, i)).collect(),
            accepted_domains: vec![AcceptedDomain { name: domain.to_string(), default: true }],
        }
    }

    /// Indexes of the objects of the given kinds that `identity` names.
    pub fn find(&self, kinds: &[RecipientKind], identity: &str) -> Vec<usize> {
        self.recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| kinds.contains(&r.kind) && r.matches(identity, &self.domain))
            .map(|(i, _)| i)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_format_and_parse_like_exchange() {
        assert_eq!(format_quota(Some(DEFAULT_PROHIBIT_SEND_QUOTA)), "49.5 GB (53,150,220,288 bytes)");
        assert_eq!(format_quota(Some(DEFAULT_ISSUE_WARNING_QUOTA)), "49 GB (52,613,349,376 bytes)");
        assert_eq!(format_quota(None), "Unlimited");
        assert_eq!(parse_quota("10GB"), Ok(Some(10 << 30)));
        assert_eq!(parse_quota("1.5 gb"), Ok(Some(3 << 29)));
        assert_eq!(parse_quota("49.5 GB (53,150,220,288 bytes)"), Ok(Some(DEFAULT_PROHIBIT_SEND_QUOTA)));
        assert_eq!(parse_quota("unlimited"), Ok(None));
        assert!(parse_quota("lots").is_err());
        assert!(parse_quota("5 XB").is_err());
    }

    #[test]
    fn generation_is_deterministic() {
        let a = TenantData::generate("contoso.onmicrosoft.com", 3);
        let b = TenantData::generate("contoso.onmicrosoft.com", 3);
        let c = TenantData::generate("fabrikam.onmicrosoft.com", 3);
        assert_eq!(a.recipients[2].guid, b.recipients[2].guid);
        assert_ne!(a.recipients[2].guid, c.recipients[2].guid);
        assert_eq!(a.recipients[0].name, "user001");
        assert_eq!(a.recipients[0].primary_smtp, "user001@contoso.onmicrosoft.com");
        assert_eq!(a.recipients[0].guid.get_version_num(), 5);
    }
}
