//! What decoding needs from a firmware ELF (PROTOCOL §5.1): the bytes of
//! its allocated sections, where format strings live by address, and the
//! module names of `.ulogger.debug_modules`.

use std::fmt;

use object::{Object, ObjectSection, ObjectSymbol};

use super::cache::SharedFormats;
use super::printf::DataModel;

/// Longest format string looked up; a longer run without a NUL is
/// reported as unterminated (an address into code or data, not a string).
pub const MAX_FORMAT_LEN: usize = 4096;

/// Longest module name read from the module table.
const MAX_MODULE_NAME: usize = 256;

/// The section holding the module table (PROTOCOL §5.1).
pub const DEBUG_MODULES_SECTION: &str = ".ulogger.debug_modules";

/// The symbol holding the module table's entry count.
const MODULES_COUNT_SYMBOL: &str = "ulogger_debug_modules_count";

/// The symbol at the start of the module table.
const MODULES_SYMBOL: &str = "ulogger_debug_modules";

/// Symbols a firmware may keep its version string in (a `char` array);
/// the first found is used. Not part of the agent: a convention.
const VERSION_SYMBOLS: &[&str] = &[
    "ulogger_firmware_version",
    "firmware_version",
    "fw_version",
    "g_firmware_version",
];

/// Why an ELF cannot serve as a symbol table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ElfError {
    /// The bytes do not start with the ELF magic, or are another object
    /// format.
    #[error(
        "not an ELF file (no \\x7fELF magic): give the firmware's linked image (.elf, .axf, .out)"
    )]
    NotElf,
    /// A big-endian ELF: agents write little-endian logs, and no
    /// big-endian uLogger target is known.
    #[error("the ELF is big-endian; uLogger logs come from little-endian firmware: is this the right file?")]
    BigEndian,
    /// The ELF is damaged or truncated.
    #[error("the ELF is malformed ({reason}): rebuild or re-copy the firmware image")]
    Malformed {
        /// What the parser reported.
        reason: String,
    },
}

/// What is wrong with an ELF's module table; the table is then left out
/// (records show module masks) but format strings still decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ModuleTableError {
    /// The section `.ulogger.debug_modules` is not in the ELF.
    #[error("the ELF has no {DEBUG_MODULES_SECTION} section: module names are unknown (the firmware does not use ULLOGGER_DEFINE_DEBUG_MODULE_TABLE)")]
    Missing,
    /// The count symbol is missing or unreadable.
    #[error("the ELF has {DEBUG_MODULES_SECTION} but no readable {MODULES_COUNT_SYMBOL}")]
    NoCount,
    /// The count says more entries than the section holds.
    #[error("{MODULES_COUNT_SYMBOL} is {count} but {DEBUG_MODULES_SECTION} holds at most {room} entries")]
    CountTooLarge {
        /// The count found.
        count: u32,
        /// Entries that fit.
        room: u64,
    },
}

/// A symbol table: the parts of a firmware ELF that decode its logs.
///
/// It owns copies of the allocated sections, so it outlives the ELF's
/// bytes and can be kept for many logs.
#[derive(Debug, Clone, Default)]
pub struct SymbolTable {
    /// Allocated sections with contents, sorted by address.
    regions: Vec<Region>,
    /// Module names by bit index (mask = 1 << index).
    modules: Vec<Option<String>>,
    module_problem: Option<ModuleTableError>,
    model: DataModel,
    firmware_version: Option<String>,
    /// The formats its logs' decoders have parsed, kept for the next
    /// log's (decision "parsed formats kept by the symbol table").
    formats: SharedFormats,
}

#[derive(Debug, Clone)]
struct Region {
    address: u64,
    bytes: Vec<u8>,
}

/// Why no format string was found at an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// No allocated section holds the address.
    NotFound,
    /// No NUL within [`MAX_FORMAT_LEN`] bytes or before the section ends.
    Unterminated,
}

impl SymbolTable {
    /// Reads a firmware ELF (32- or 64-bit, little-endian).
    ///
    /// A missing or damaged module table is not an error (see
    /// [`SymbolTable::module_table_problem`]).
    ///
    /// # Errors
    ///
    /// [`ElfError::NotElf`] for other bytes, [`ElfError::BigEndian`],
    /// [`ElfError::Malformed`] when the ELF's headers cannot be read.
    pub fn from_elf(elf: &[u8]) -> Result<SymbolTable, ElfError> {
        if !elf.starts_with(b"\x7fELF") {
            return Err(ElfError::NotElf);
        }
        // e_ident[EI_DATA]: 2 is big-endian. Checked before parsing, which
        // would otherwise fail on a foreign layout with a vaguer error.
        if elf.get(5) == Some(&2) {
            return Err(ElfError::BigEndian);
        }
        let file = object::File::parse(elf).map_err(|e| ElfError::Malformed {
            reason: e.to_string(),
        })?;
        if !file.is_little_endian() {
            return Err(ElfError::BigEndian);
        }
        let model = if file.is_64() {
            DataModel::Lp64
        } else {
            DataModel::Ilp32
        };
        let mut regions = Vec::new();
        let mut modules_section = None;
        for section in file.sections() {
            let object::SectionFlags::Elf { sh_flags, .. } = section.flags() else {
                continue;
            };
            let name = section.name().unwrap_or_default();
            if name == DEBUG_MODULES_SECTION {
                modules_section = Some((section.address(), section.size()));
            }
            if !sh_flags.contains(object::elf::SHF_ALLOC) {
                continue;
            }
            // NOBITS (.bss) has no contents: nothing to look up there.
            let Ok(bytes) = section.data() else { continue };
            if bytes.is_empty() {
                continue;
            }
            regions.push(Region {
                address: section.address(),
                bytes: bytes.to_vec(),
            });
        }
        regions.sort_by_key(|r| r.address);
        let symbol = |wanted: &str| {
            file.symbols()
                .find(|s| s.name() == Ok(wanted))
                .map(|s| (s.address(), s.size()))
        };
        let mut table = SymbolTable {
            regions,
            modules: Vec::new(),
            module_problem: None,
            model,
            firmware_version: None,
            formats: SharedFormats::default(),
        };
        table.firmware_version = VERSION_SYMBOLS
            .iter()
            .find_map(|name| symbol(name))
            .and_then(|(address, _)| table.c_string(address, MAX_MODULE_NAME).ok())
            .filter(|v| !v.is_empty() && v.iter().all(|b| (0x20..0x7f).contains(b)))
            .map(|v| String::from_utf8_lossy(v).into_owned());
        match modules_section {
            None => table.module_problem = Some(ModuleTableError::Missing),
            Some((start, size)) => {
                let count = symbol(MODULES_COUNT_SYMBOL).and_then(|(a, _)| table.u32_at(a));
                let table_start = symbol(MODULES_SYMBOL).map_or(start, |(a, _)| a);
                match count {
                    None => table.module_problem = Some(ModuleTableError::NoCount),
                    Some(count) => {
                        let entry: u64 = if model == DataModel::Lp64 { 16 } else { 8 };
                        let room = (start + size).saturating_sub(table_start) / entry;
                        if u64::from(count) > room {
                            table.module_problem =
                                Some(ModuleTableError::CountTooLarge { count, room });
                        } else {
                            table.read_modules(table_start, count, entry);
                        }
                    }
                }
            }
        }
        Ok(table)
    }

    /// A symbol table from parts, without an ELF: `regions` are (address,
    /// contents) of allocated memory, `modules` are (bit index, name).
    /// For tests, fuzzing and tools that keep symbols in another form.
    pub fn from_parts(
        regions: impl IntoIterator<Item = (u64, Vec<u8>)>,
        modules: impl IntoIterator<Item = (u8, String)>,
        model: DataModel,
    ) -> SymbolTable {
        let mut regions: Vec<Region> = regions
            .into_iter()
            .map(|(address, bytes)| Region { address, bytes })
            .collect();
        regions.sort_by_key(|r| r.address);
        let mut table = SymbolTable {
            regions,
            model,
            ..SymbolTable::default()
        };
        for (bit, name) in modules {
            table.set_module(bit, name);
        }
        table
    }

    /// The table with `version` as its ELF's firmware version (tests).
    #[cfg(test)]
    pub(crate) fn with_firmware_version(mut self, version: &str) -> SymbolTable {
        self.firmware_version = Some(version.to_string());
        self
    }

    fn read_modules(&mut self, start: u64, count: u32, entry: u64) {
        for i in 0..u64::from(count) {
            let at = start + i * entry;
            let (pointer, mask) = if self.model == DataModel::Lp64 {
                (self.u64_at(at), self.u32_at(at + 8))
            } else {
                (self.u32_at(at).map(u64::from), self.u32_at(at + 4))
            };
            let (Some(pointer), Some(mask)) = (pointer, mask) else {
                continue;
            };
            // Only single-bit masks name a module; bit 31 is "always log".
            if mask.count_ones() != 1 || mask == 1 << 31 {
                continue;
            }
            let Ok(name) = self.c_string(pointer, MAX_MODULE_NAME) else {
                continue;
            };
            let name = String::from_utf8_lossy(name).into_owned();
            let bit = u8::try_from(mask.trailing_zeros()).unwrap_or(u8::MAX);
            self.set_module(bit, name);
        }
    }

    fn set_module(&mut self, bit: u8, name: String) {
        let bit = usize::from(bit);
        if bit >= 32 {
            return;
        }
        if self.modules.len() <= bit {
            self.modules.resize(bit + 1, None);
        }
        if let Some(slot) = self.modules.get_mut(bit) {
            *slot = Some(name);
        }
    }

    /// The name of the module of bit `index` (mask `1 << index`), when
    /// the module table has it.
    pub fn module_name(&self, index: u8) -> Option<&str> {
        self.modules.get(usize::from(index))?.as_deref()
    }

    /// Every module the table names, as (bit index, name).
    pub fn modules(&self) -> impl Iterator<Item = (u8, &str)> {
        self.modules
            .iter()
            .enumerate()
            .filter_map(|(bit, name)| Some((u8::try_from(bit).ok()?, name.as_deref()?)))
    }

    /// Whether the ELF had a usable module table.
    pub fn has_module_table(&self) -> bool {
        self.module_problem.is_none()
    }

    /// Why the module table was left out, if it was.
    pub fn module_table_problem(&self) -> Option<&ModuleTableError> {
        self.module_problem.as_ref()
    }

    /// The parsed formats shared by the decoders of its logs.
    pub(crate) fn shared_formats(&self) -> &SharedFormats {
        &self.formats
    }

    /// The C data model: 32-bit ELFs are ILP32, 64-bit ones LP64.
    pub fn data_model(&self) -> DataModel {
        self.model
    }

    /// The firmware's version string, when the ELF keeps it in a symbol
    /// named `ulogger_firmware_version`, `firmware_version`, `fw_version`
    /// or `g_firmware_version` (a convention, not the agent's).
    pub fn firmware_version(&self) -> Option<&str> {
        self.firmware_version.as_deref()
    }

    /// The format string at `address` (without its NUL), if an allocated
    /// section holds one there.
    pub fn format_at(&self, address: u64) -> Option<&[u8]> {
        self.c_string(address, MAX_FORMAT_LEN).ok()
    }

    pub(crate) fn c_string(&self, address: u64, max: usize) -> Result<&[u8], Lookup> {
        let bytes = self.bytes_from(address).ok_or(Lookup::NotFound)?;
        let window = bytes.get(..max.saturating_add(1)).unwrap_or(bytes);
        let end = window
            .iter()
            .position(|&b| b == 0)
            .ok_or(Lookup::Unterminated)?;
        Ok(window.get(..end).unwrap_or_default())
    }

    /// The bytes of the region holding `address`, from it to the region's end.
    fn bytes_from(&self, address: u64) -> Option<&[u8]> {
        let after = self.regions.partition_point(|r| r.address <= address);
        let region = self.regions.get(after.checked_sub(1)?)?;
        let offset = usize::try_from(address - region.address).ok()?;
        region.bytes.get(offset..).filter(|b| !b.is_empty())
    }

    fn u32_at(&self, address: u64) -> Option<u32> {
        let bytes = self.bytes_from(address)?.first_chunk::<4>()?;
        Some(u32::from_le_bytes(*bytes))
    }

    fn u64_at(&self, address: u64) -> Option<u64> {
        let bytes = self.bytes_from(address)?.first_chunk::<8>()?;
        Some(u64::from_le_bytes(*bytes))
    }
}

impl fmt::Display for SymbolTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes: usize = self.regions.iter().map(|r| r.bytes.len()).sum();
        write!(
            f,
            "{} allocated sections ({bytes} bytes), {} modules",
            self.regions.len(),
            self.modules().count()
        )
    }
}
