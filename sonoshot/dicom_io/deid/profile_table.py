"""profile_table.py
================

DICOM PS3.15 **2024b**, Annex E, Table E.1-1 "Application Level Confidentiality Profile
Attributes": one row per attribute, transcribed in full (621 rows). Columns:

``tag | basic profile action | option actions | attribute name``

Option letters: L Retain Longitudinal Temporal Information with Modified Dates, F ... with Full
Dates, P Retain Patient Characteristics, D Retain Device Identity, I Retain Institution Identity,
U Retain UIDs, C Clean Descriptors, G Clean Graphics, S Clean Structured Content, V Retain Safe
Private. Actions (PS3.15 E.1.1): D dummy, Z zero length or dummy, X remove, K keep, C clean,
U replace UID consistently; ``A/B`` lets the IOD decide (see :mod:`.profile`).

``tests/test_deid_profile.py`` checks every row against the standard's own table.
"""

EDITION = "2024b"

TABLE = """\
0000,1000 | X      | U=K                    | Affected SOP Instance UID
0000,1001 | U      | U=K                    | Requested SOP Instance UID
0002,0003 | U      | U=K                    | Media Storage SOP Instance UID
0004,1511 | U      | U=K                    | Referenced SOP Instance UID in File
0008,0012 | X/D    | L=C F=K                | Instance Creation Date
0008,0013 | X/Z/D  | L=C F=K                | Instance Creation Time
0008,0014 | U      | U=K                    | Instance Creator UID
0008,0015 | X      | L=C F=K                | Instance Coercion DateTime
0008,0017 | U      | U=K                    | Acquisition UID
0008,0018 | U      | U=K                    | SOP Instance UID
0008,0019 | U      | U=K                    | Pyramid UID
0008,0020 | Z      | L=C F=K                | Study Date
0008,0021 | X/D    | L=C F=K                | Series Date
0008,0022 | X/Z    | L=C F=K                | Acquisition Date
0008,0023 | Z/D    | L=C F=K                | Content Date
0008,0024 | X      | L=C F=K                | Overlay Date
0008,0025 | X      | L=C F=K                | Curve Date
0008,002A | X/Z/D  | L=C F=K                | Acquisition DateTime
0008,0030 | Z      | L=C F=K                | Study Time
0008,0031 | X/D    | L=C F=K                | Series Time
0008,0032 | X/Z    | L=C F=K                | Acquisition Time
0008,0033 | Z/D    | L=C F=K                | Content Time
0008,0034 | X      | L=C F=K                | Overlay Time
0008,0035 | X      | L=C F=K                | Curve Time
0008,0050 | Z      |                        | Accession Number
0008,0054 | X      | D=C                    | Retrieve AE Title
0008,0055 | X      | D=C                    | Station AE Title
0008,0058 | U      | U=K                    | Failed SOP Instance UID List
0008,0080 | X/Z/D  | I=K                    | Institution Name
0008,0081 | X      | I=K                    | Institution Address
0008,0082 | X/Z/D  | I=K                    | Institution Code Sequence
0008,0090 | Z      |                        | Referring Physician's Name
0008,0092 | X      |                        | Referring Physician's Address
0008,0094 | X      |                        | Referring Physician's Telephone Numbers
0008,0096 | X      |                        | Referring Physician Identification Sequence
0008,009C | Z      |                        | Consulting Physician's Name
0008,009D | X      |                        | Consulting Physician Identification Sequence
0008,0106 | D      | L=C F=K                | Context Group Version
0008,0107 | D      | L=C F=K                | Context Group Local Version
0008,0201 | X      | L=C F=K                | Timezone Offset From UTC
0008,1000 | X      | D=C                    | Network ID
0008,1010 | X/Z/D  | D=K                    | Station Name
0008,1030 | X      | C=C                    | Study Description
0008,103E | X      | C=C                    | Series Description
0008,1040 | X      | I=K                    | Institutional Department Name
0008,1041 | X      | I=K                    | Institutional Department Type Code Sequence
0008,1048 | X      |                        | Physician(s) of Record
0008,1049 | X      |                        | Physician(s) of Record Identification Sequence
0008,1050 | X      |                        | Performing Physician's Name
0008,1052 | X      |                        | Performing Physician Identification Sequence
0008,1060 | X      |                        | Name of Physician(s) Reading Study
0008,1062 | X      |                        | Physician(s) Reading Study Identification Sequence
0008,1070 | X/Z/D  |                        | Operators' Name
0008,1072 | X/D    |                        | Operator Identification Sequence
0008,1080 | X      | C=C                    | Admitting Diagnoses Description
0008,1084 | X      | C=C                    | Admitting Diagnoses Code Sequence
0008,1088 | X      | C=C                    | Pyramid Description
0008,1110 | X/Z    | U=K                    | Referenced Study Sequence
0008,1111 | X/Z/D  | U=K                    | Referenced Performed Procedure Step Sequence
0008,1120 | X      | U=K                    | Referenced Patient Sequence
0008,1140 | X/Z/U* | U=K                    | Referenced Image Sequence
0008,1155 | U      | U=K                    | Referenced SOP Instance UID
0008,1195 | U      | U=K                    | Transaction UID
0008,2111 | X      | C=C                    | Derivation Description
0008,2112 | X/Z/U* | U=K                    | Source Image Sequence
0008,3010 | U      | U=K                    | Irradiation Event UID
0008,4000 | X      | C=C                    | Identifying Comments
0010,0010 | Z      |                        | Patient's Name
0010,0020 | Z/D    |                        | Patient ID
0010,0021 | X      |                        | Issuer of Patient ID
0010,0030 | Z      |                        | Patient's Birth Date
0010,0032 | X      |                        | Patient's Birth Time
0010,0040 | Z      | P=K                    | Patient's Sex
0010,0050 | X      |                        | Patient's Insurance Plan Code Sequence
0010,0101 | X      |                        | Patient's Primary Language Code Sequence
0010,0102 | X      |                        | Patient's Primary Language Modifier Code Sequence
0010,1000 | X      |                        | Other Patient IDs
0010,1001 | X      |                        | Other Patient Names
0010,1002 | X      |                        | Other Patient IDs Sequence
0010,1005 | X      |                        | Patient's Birth Name
0010,1010 | X      | P=K                    | Patient's Age
0010,1020 | X      | P=K                    | Patient's Size
0010,1030 | X      | P=K                    | Patient's Weight
0010,1040 | X      |                        | Patient's Address
0010,1050 | X      |                        | Insurance Plan Identification
0010,1060 | X      |                        | Patient's Mother's Birth Name
0010,1080 | X      |                        | Military Rank
0010,1081 | X      |                        | Branch of Service
0010,1090 | X      |                        | Medical Record Locator
0010,1100 | X      |                        | Referenced Patient Photo Sequence
0010,2000 | X      | C=C                    | Medical Alerts
0010,2110 | X      | P=C C=C                | Allergies
0010,2150 | X      |                        | Country of Residence
0010,2152 | X      |                        | Region of Residence
0010,2154 | X      |                        | Patient's Telephone Numbers
0010,2155 | X      |                        | Patient's Telecom Information
0010,2160 | X      | P=K                    | Ethnic Group
0010,2180 | X      | C=C                    | Occupation
0010,21A0 | X      | P=K                    | Smoking Status
0010,21B0 | X      | C=C                    | Additional Patient History
0010,21C0 | X      | P=K                    | Pregnancy Status
0010,21D0 | X      | L=C F=K                | Last Menstrual Date
0010,21F0 | X      |                        | Patient's Religious Preference
0010,2203 | X/Z    | P=K                    | Patient's Sex Neutered
0010,2297 | X      |                        | Responsible Person
0010,2299 | X      |                        | Responsible Organization
0010,4000 | X      | C=C                    | Patient Comments
0012,0010 | D      |                        | Clinical Trial Sponsor Name
0012,0020 | D      |                        | Clinical Trial Protocol ID
0012,0021 | Z      |                        | Clinical Trial Protocol Name
0012,0022 | X      |                        | Issuer of Clinical Trial Protocol ID
0012,0023 | X      |                        | Other Clinical Trial Protocol IDs Sequence
0012,0030 | Z      | I=K                    | Clinical Trial Site ID
0012,0031 | Z      | I=K                    | Clinical Trial Site Name
0012,0032 | X      |                        | Issuer of Clinical Trial Site ID
0012,0040 | D      |                        | Clinical Trial Subject ID
0012,0041 | X      |                        | Issuer of Clinical Trial Subject ID
0012,0042 | D      |                        | Clinical Trial Subject Reading ID
0012,0043 | X      |                        | Issuer of Clinical Trial Subject Reading ID
0012,0050 | Z      |                        | Clinical Trial Time Point ID
0012,0051 | X      | C=C                    | Clinical Trial Time Point Description
0012,0055 | X      |                        | Issuer of Clinical Trial Time Point ID
0012,0060 | Z      | I=K                    | Clinical Trial Coordinating Center Name
0012,0071 | X      |                        | Clinical Trial Series ID
0012,0072 | X      | C=C                    | Clinical Trial Series Description
0012,0073 | X      |                        | Issuer of Clinical Trial Series ID
0012,0081 | D      | I=K                    | Clinical Trial Protocol Ethics Committee Name
0012,0082 | X      |                        | Clinical Trial Protocol Ethics Committee Approval Number
0012,0086 | X      | L=C F=K                | Ethics Committee Approval Effectiveness Start Date
0012,0087 | X      | L=C F=K                | Ethics Committee Approval Effectiveness End Date
0014,407C | X      | L=C F=K D=K            | Calibration Time
0014,407E | X      | L=C F=K D=K            | Calibration Date
0016,002B | X      | C=C                    | Maker Note
0016,004B | X      | C=C                    | Device Setting Description
0016,004D | X      |                        | Camera Owner Name
0016,004E | X      | D=K                    | Lens Specification
0016,004F | X      | D=K                    | Lens Make
0016,0050 | X      | D=K                    | Lens Model
0016,0051 | X      | D=K                    | Lens Serial Number
0016,0070 | X      |                        | GPS Version ID
0016,0071 | X      |                        | GPS Latitude Ref
0016,0072 | X      |                        | GPS Latitude
0016,0073 | X      |                        | GPS Longitude Ref
0016,0074 | X      |                        | GPS Longitude
0016,0075 | X      |                        | GPS Altitude Ref
0016,0076 | X      |                        | GPS Altitude
0016,0077 | X      |                        | GPS Time Stamp
0016,0078 | X      |                        | GPS Satellites
0016,0079 | X      |                        | GPS Status
0016,007A | X      |                        | GPS Measure Mode
0016,007B | X      |                        | GPS DOP
0016,007C | X      |                        | GPS Speed Ref
0016,007D | X      |                        | GPS Speed
0016,007E | X      |                        | GPS Track Ref
0016,007F | X      |                        | GPS Track
0016,0080 | X      |                        | GPS Img Direction Ref
0016,0081 | X      |                        | GPS Img Direction
0016,0082 | X      |                        | GPS Map Datum
0016,0083 | X      |                        | GPS Dest Latitude Ref
0016,0084 | X      |                        | GPS Dest Latitude
0016,0085 | X      |                        | GPS Dest Longitude Ref
0016,0086 | X      |                        | GPS Dest Longitude
0016,0087 | X      |                        | GPS Dest Bearing Ref
0016,0088 | X      |                        | GPS Dest Bearing
0016,0089 | X      |                        | GPS Dest Distance Ref
0016,008A | X      |                        | GPS Dest Distance
0016,008B | X      |                        | GPS Processing Method
0016,008C | X      |                        | GPS Area Information
0016,008D | X      | L=C F=K                | GPS Date Stamp
0016,008E | X      |                        | GPS Differential
0018,0010 | Z/D    | C=C                    | Contrast/Bolus Agent
0018,0027 | X      | L=C F=K                | Intervention Drug Stop Time
0018,0035 | X      | L=C F=K                | Intervention Drug Start Time
0018,1000 | X/Z/D  | D=K                    | Device Serial Number
0018,1002 | U      | D=K U=K                | Device UID
0018,1004 | X      | D=K                    | Plate ID
0018,1005 | X      | D=K                    | Generator ID
0018,1007 | X      | D=K                    | Cassette ID
0018,1008 | X      | D=K                    | Gantry ID
0018,1009 | X      | D=K                    | Unique Device Identifier
0018,100A | X      | D=K                    | UDI Sequence
0018,100B | U      | D=K U=K                | Manufacturer's Device Class UID
0018,1012 | X      | L=C F=K                | Date of Secondary Capture
0018,1014 | X      | L=C F=K                | Time of Secondary Capture
0018,1030 | X/D    | C=C                    | Protocol Name
0018,1042 | X      | L=C F=K                | Contrast/Bolus Start Time
0018,1043 | X      | L=C F=K                | Contrast/Bolus Stop Time
0018,1072 | X      | L=C F=K                | Radiopharmaceutical Start Time
0018,1073 | X      | L=C F=K                | Radiopharmaceutical Stop Time
0018,1078 | X      | L=C F=K                | Radiopharmaceutical Start DateTime
0018,1079 | X      | L=C F=K                | Radiopharmaceutical Stop DateTime
0018,11BB | D      | C=C                    | Acquisition Field Of View Label
0018,1200 | X      | L=C F=K D=K            | Date of Last Calibration
0018,1201 | X      | L=C F=K D=K            | Time of Last Calibration
0018,1202 | X      | L=C F=K D=K            | DateTime of Last Calibration
0018,1203 | Z      | L=C F=K D=K            | Calibration DateTime
0018,1204 | X      | L=C F=K D=K            | Date of Manufacture
0018,1205 | X      | L=C F=K D=K            | Date of Installation
0018,1400 | X/D    | C=C                    | Acquisition Device Processing Description
0018,2042 | U      | U=K                    | Target UID
0018,4000 | X      | C=C                    | Acquisition Comments
0018,5011 | X      | D=K                    | Transducer Identification Sequence
0018,700A | X/D    | D=K                    | Detector ID
0018,700C | X/D    | L=C F=K D=K            | Date of Last Detector Calibration
0018,700E | X/D    | L=C F=K D=K            | Time of Last Detector Calibration
0018,9074 | D      | L=C F=K                | Frame Acquisition DateTime
0018,9151 | D      | L=C F=K                | Frame Reference DateTime
0018,9185 | X      | C=C                    | Respiratory Motion Compensation Technique Description
0018,9367 | D      | D=K                    | X-Ray Source ID
0018,9369 | D      | L=C F=K                | Source Start DateTime
0018,936A | D      | L=C F=K                | Source End DateTime
0018,9371 | D      | D=K                    | X-Ray Detector ID
0018,9373 | X      | D=K                    | X-Ray Detector Label
0018,937B | X      | C=C                    | Multi-energy Acquisition Description
0018,937F | X      | C=C                    | Decomposition Description
0018,9424 | X      | C=C                    | Acquisition Protocol Description
0018,9516 | X/D    | L=C F=K                | Start Acquisition DateTime
0018,9517 | X/D    | L=C F=K                | End Acquisition DateTime
0018,9623 | D      | L=C F=K                | Functional Sync Pulse
0018,9701 | D      | L=C F=K                | Decay Correction DateTime
0018,9804 | D      | L=C F=K                | Exclusion Start DateTime
0018,9919 | Z/D    | L=C F=K                | Instruction Performed DateTime
0018,9937 | X      | C=C                    | Requested Series Description
0018,A002 | X      | L=C F=K                | Contribution DateTime
0018,A003 | X      | C=C                    | Contribution Description
0020,000D | U      | U=K                    | Study Instance UID
0020,000E | U      | U=K                    | Series Instance UID
0020,0010 | Z      |                        | Study ID
0020,0027 | X      | C=C                    | Pyramid Label
0020,0052 | U      | U=K                    | Frame of Reference UID
0020,0200 | U      | U=K                    | Synchronization Frame of Reference UID
0020,3401 | X      | D=K                    | Modifying Device ID
0020,3403 | X      | L=C F=K                | Modified Image Date
0020,3405 | X      | L=C F=K                | Modified Image Time
0020,3406 | X      |                        | Modified Image Description
0020,4000 | X      | C=C                    | Image Comments
0020,9158 | X      | C=C                    | Frame Comments
0020,9161 | U      | U=K                    | Concatenation UID
0020,9164 | U      | U=K                    | Dimension Organization UID
0028,1199 | U      | U=K                    | Palette Color Lookup Table UID
0028,1214 | U      | U=K                    | Large Palette Color Lookup Table UID
0028,4000 | X      |                        | Image Presentation Comments
0032,0012 | X      |                        | Study ID Issuer
0032,0032 | X      | L=C F=K                | Study Verified Date
0032,0033 | X      | L=C F=K                | Study Verified Time
0032,0034 | X      | L=C F=K                | Study Read Date
0032,0035 | X      | L=C F=K                | Study Read Time
0032,1000 | X      | L=C F=K                | Scheduled Study Start Date
0032,1001 | X      | L=C F=K                | Scheduled Study Start Time
0032,1010 | X      | L=C F=K                | Scheduled Study Stop Date
0032,1011 | X      | L=C F=K                | Scheduled Study Stop Time
0032,1020 | X      | D=K                    | Scheduled Study Location
0032,1021 | X      | D=C                    | Scheduled Study Location AE Title
0032,1030 | X      | C=C                    | Reason for Study
0032,1032 | X      |                        | Requesting Physician
0032,1033 | X      |                        | Requesting Service
0032,1040 | X      | L=C F=K                | Study Arrival Date
0032,1041 | X      | L=C F=K                | Study Arrival Time
0032,1050 | X      | L=C F=K                | Study Completion Date
0032,1051 | X      | L=C F=K                | Study Completion Time
0032,1060 | X/Z    | C=C                    | Requested Procedure Description
0032,1066 | X      | C=C                    | Reason for Visit
0032,1067 | X      | C=C                    | Reason for Visit Code Sequence
0032,1070 | X      | C=C                    | Requested Contrast Agent
0032,4000 | X      | C=C                    | Study Comments
0034,0001 | D      |                        | Flow Identifier Sequence
0034,0002 | D      |                        | Flow Identifier
0034,0005 | D      |                        | Source Identifier
0034,0007 | D      | L=C F=K                | Frame Origin Timestamp
0038,0004 | X      |                        | Referenced Patient Alias Sequence
0038,0010 | X      |                        | Admission ID
0038,0011 | X      |                        | Issuer of Admission ID
0038,0014 | X      |                        | Issuer of Admission ID Sequence
0038,001A | X      | L=C F=K                | Scheduled Admission Date
0038,001B | X      | L=C F=K                | Scheduled Admission Time
0038,001C | X      | L=C F=K                | Scheduled Discharge Date
0038,001D | X      | L=C F=K                | Scheduled Discharge Time
0038,001E | X      |                        | Scheduled Patient Institution Residence
0038,0020 | X      | L=C F=K                | Admitting Date
0038,0021 | X      | L=C F=K                | Admitting Time
0038,0030 | X      | L=C F=K                | Discharge Date
0038,0032 | X      | L=C F=K                | Discharge Time
0038,0040 | X      | C=C                    | Discharge Diagnosis Description
0038,0050 | X      | P=C                    | Special Needs
0038,0060 | X      |                        | Service Episode ID
0038,0061 | X      |                        | Issuer of Service Episode ID
0038,0062 | X      | C=C                    | Service Episode Description
0038,0064 | X      |                        | Issuer of Service Episode ID Sequence
0038,0300 | X      |                        | Current Patient Location
0038,0400 | X      |                        | Patient's Institution Residence
0038,0500 | X      | P=C C=C                | Patient State
0038,4000 | X      | C=C                    | Visit Comments
003A,0310 | U      | U=K                    | Multiplex Group UID
003A,0314 | D      | L=C F=K                | Impedance Measurement DateTime
003A,0329 | X      | C=C                    | Waveform Filter Description
003A,032B | X      | C=C                    | Filter Lookup Table Description
0040,0001 | X      | D=C                    | Scheduled Station AE Title
0040,0002 | X      | L=C F=K                | Scheduled Procedure Step Start Date
0040,0003 | X      | L=C F=K                | Scheduled Procedure Step Start Time
0040,0004 | X      | L=C F=K                | Scheduled Procedure Step End Date
0040,0005 | X      | L=C F=K                | Scheduled Procedure Step End Time
0040,0006 | X      |                        | Scheduled Performing Physician's Name
0040,0007 | X      | C=C                    | Scheduled Procedure Step Description
0040,0009 | X      |                        | Scheduled Procedure Step ID
0040,000B | X      |                        | Scheduled Performing Physician Identification Sequence
0040,0010 | X      | D=K                    | Scheduled Station Name
0040,0011 | X      | D=K                    | Scheduled Procedure Step Location
0040,0012 | X      | P=C                    | Pre-Medication
0040,0241 | X      | D=C                    | Performed Station AE Title
0040,0242 | X      | D=K                    | Performed Station Name
0040,0243 | X      |                        | Performed Location
0040,0244 | X      | L=C F=K                | Performed Procedure Step Start Date
0040,0245 | X      | L=C F=K                | Performed Procedure Step Start Time
0040,0250 | X      | L=C F=K                | Performed Procedure Step End Date
0040,0251 | X      | L=C F=K                | Performed Procedure Step End Time
0040,0253 | X      |                        | Performed Procedure Step ID
0040,0254 | X      | C=C                    | Performed Procedure Step Description
0040,0275 | X      | C=C                    | Request Attributes Sequence
0040,0280 | X      | C=C                    | Comments on the Performed Procedure Step
0040,0310 | X      | C=C                    | Comments on Radiation Dose
0040,050A | X      |                        | Specimen Accession Number
0040,0512 | D      |                        | Container Identifier
0040,0513 | Z      |                        | Issuer of the Container Identifier Sequence
0040,051A | X      | C=C                    | Container Description
0040,0551 | D      |                        | Specimen Identifier
0040,0554 | U      | U=K                    | Specimen UID
0040,0555 | X/Z    | S=C                    | Acquisition Context Sequence
0040,0562 | Z      |                        | Issuer of the Specimen Identifier Sequence
0040,0600 | X      | C=C                    | Specimen Short Description
0040,0602 | X      | C=C                    | Specimen Detailed Description
0040,0610 | Z      | S=C                    | Specimen Preparation Sequence
0040,06FA | X      |                        | Slide Identifier
0040,1001 | X      |                        | Requested Procedure ID
0040,1002 | X      | C=C                    | Reason for the Requested Procedure
0040,1004 | X      |                        | Patient Transport Arrangements
0040,1005 | X      |                        | Requested Procedure Location
0040,100A | X      | C=C                    | Reason for Requested Procedure Code Sequence
0040,1010 | X      |                        | Names of Intended Recipients of Results
0040,1011 | X      |                        | Intended Recipients of Results Identification Sequence
0040,1101 | D      |                        | Person Identification Code Sequence
0040,1102 | X      |                        | Person's Address
0040,1103 | X      |                        | Person's Telephone Numbers
0040,1104 | X      |                        | Person's Telecom Information
0040,1400 | X      | C=C                    | Requested Procedure Comments
0040,2001 | X      | C=C                    | Reason for the Imaging Service Request
0040,2004 | X      | L=C F=K                | Issue Date of Imaging Service Request
0040,2005 | X      | L=C F=K                | Issue Time of Imaging Service Request
0040,2008 | X      |                        | Order Entered By
0040,2009 | X      |                        | Order Enterer's Location
0040,2010 | X      |                        | Order Callback Phone Number
0040,2011 | X      |                        | Order Callback Telecom Information
0040,2016 | Z      |                        | Placer Order Number / Imaging Service Request
0040,2017 | Z      |                        | Filler Order Number / Imaging Service Request
0040,2400 | X      | C=C                    | Imaging Service Request Comments
0040,3001 | X      |                        | Confidentiality Constraint on Patient Data Description
0040,4005 | X      | L=C F=K                | Scheduled Procedure Step Start DateTime
0040,4008 | X      | L=C F=K                | Scheduled Procedure Step Expiration DateTime
0040,4010 | X      | L=C F=K                | Scheduled Procedure Step Modification DateTime
0040,4011 | X      | L=C F=K                | Expected Completion DateTime
0040,4023 | U      | U=K                    | Referenced General Purpose Scheduled Procedure Step Transaction UID
0040,4025 | X      | D=K                    | Scheduled Station Name Code Sequence
0040,4027 | X      | D=K                    | Scheduled Station Geographic Location Code Sequence
0040,4028 | X      | D=K                    | Performed Station Name Code Sequence
0040,4030 | X      | D=K                    | Performed Station Geographic Location Code Sequence
0040,4034 | X      |                        | Scheduled Human Performers Sequence
0040,4035 | X      |                        | Actual Human Performers Sequence
0040,4036 | X      |                        | Human Performer's Organization
0040,4037 | X      |                        | Human Performer's Name
0040,4050 | X      | L=C F=K                | Performed Procedure Step Start DateTime
0040,4051 | X      | L=C F=K                | Performed Procedure Step End DateTime
0040,4052 | X      | L=C F=K                | Procedure Step Cancellation DateTime
0040,A023 | X      | L=C F=K                | Findings Group Recording Date (Trial)
0040,A024 | X      | L=C F=K                | Findings Group Recording Time (Trial)
0040,A027 | D      |                        | Verifying Organization
0040,A030 | D      | L=C F=K                | Verification DateTime
0040,A032 | X/D    | L=C F=K                | Observation DateTime
0040,A033 | X      | L=C F=K                | Observation Start DateTime
0040,A073 | D      |                        | Verifying Observer Sequence
0040,A075 | D      |                        | Verifying Observer Name
0040,A078 | X      |                        | Author Observer Sequence
0040,A07A | X      |                        | Participant Sequence
0040,A07C | X      |                        | Custodial Organization Sequence
0040,A082 | Z      | L=C F=K                | Participation DateTime
0040,A088 | Z      |                        | Verifying Observer Identification Code Sequence
0040,A110 | X      | L=C F=K                | Date of Document or Verbal Transaction (Trial)
0040,A112 | X      | L=C F=K                | Time of Document Creation or Verbal Transaction (Trial)
0040,A120 | D      | L=C F=K                | DateTime
0040,A121 | D      | L=C F=K                | Date
0040,A122 | D      | L=C F=K                | Time
0040,A123 | D      |                        | Person Name
0040,A124 | U      |                        | UID
0040,A13A | D      | L=C F=K                | Referenced DateTime
0040,A171 | U      | U=K                    | Observation UID
0040,A172 | U      | U=K                    | Referenced Observation UID (Trial)
0040,A192 | X      | L=C F=K                | Observation Date (Trial)
0040,A193 | X      | L=C F=K                | Observation Time (Trial)
0040,A307 | X      |                        | Current Observer (Trial)
0040,A352 | X      |                        | Verbal Source (Trial)
0040,A353 | X      |                        | Address (Trial)
0040,A354 | X      |                        | Telephone Number (Trial)
0040,A358 | X      |                        | Verbal Source Identifier Code Sequence (Trial)
0040,A402 | U      | U=K                    | Observation Subject UID (Trial)
0040,A730 | D      | S=C                    | Content Sequence
0040,DB06 | X      | L=C F=K                | Template Version
0040,DB07 | X      | L=C F=K                | Template Local Version
0040,DB0C | U      | U=K                    | Template Extension Organization UID
0040,DB0D | U      | U=K                    | Template Extension Creator UID
0040,E004 | X      | L=C F=K                | HL7 Document Effective Time
0042,0011 | D      |                        | Encapsulated Document
0044,0004 | X      | L=C F=K                | Approval Status DateTime
0044,000B | X      | L=C F=K                | Product Expiration DateTime
0044,0010 | X      | L=C F=K                | Substance Administration DateTime
0044,0104 | D      | L=C F=K                | Assertion DateTime
0044,0105 | X      | L=C F=K                | Assertion Expiration DateTime
0050,001B | X      |                        | Container Component ID
0050,0020 | X      | D=K                    | Device Description
0050,0021 | X      | C=C                    | Long Device Description
0062,0021 | U      | U=K                    | Tracking UID
0064,0003 | U      | U=K                    | Source Frame of Reference UID
0068,6226 | D      | L=C F=K                | Effective DateTime
0068,6270 | D      | L=C F=K                | Information Issue DateTime
006A,0003 | D      | U=K                    | Annotation Group UID
006A,0005 | D      | C=C                    | Annotation Group Label
006A,0006 | X      | C=C                    | Annotation Group Description
0070,0001 | D      | G=C                    | Graphic Annotation Sequence
0070,0082 | X      | L=C F=K                | Presentation Creation Date
0070,0083 | X      | L=C F=K                | Presentation Creation Time
0070,0084 | Z/D    |                        | Content Creator's Name
0070,0086 | X      |                        | Content Creator's Identification Code Sequence
0070,031A | U      | U=K                    | Fiducial UID
0070,1101 | U      | U=K                    | Presentation Display Collection UID
0070,1102 | U      | U=K                    | Presentation Sequence Collection UID
0072,000A | D      | L=C F=K                | Hanging Protocol Creation DateTime
0072,005E | D      | D=C                    | Selector AE Value
0072,005F | D      | P=K                    | Selector AS Value
0072,0061 | D      | L=C F=K                | Selector DA Value
0072,0063 | D      | L=C F=K                | Selector DT Value
0072,0065 | D      |                        | Selector OB Value
0072,0066 | D      | C=C                    | Selector LO Value
0072,0068 | D      | C=C                    | Selector LT Value
0072,006A | D      |                        | Selector PN Value
0072,006B | D      | L=C F=K                | Selector TM Value
0072,006C | D      | C=C                    | Selector SH Value
0072,006D | D      |                        | Selector UN Value
0072,006E | D      | C=C                    | Selector ST Value
0072,0070 | D      | C=C                    | Selector UT Value
0072,0071 | D      |                        | Selector UR Value
0074,1234 | X      | D=C                    | Receiving AE
0074,1236 | X      | D=C                    | Requesting AE
0088,0140 | U      | U=K                    | Storage Media File-set UID
0088,0200 | X      |                        | Icon Image Sequence (see Note 11)
0088,0904 | X      |                        | Topic Title
0088,0906 | X      |                        | Topic Subject
0088,0910 | X      |                        | Topic Author
0088,0912 | X      |                        | Topic Keywords
0100,0420 | X      | L=C F=K                | SOP Authorization DateTime
0400,0100 | U      |                        | Digital Signature UID
0400,0105 | D      | L=C F=K                | Digital Signature DateTime
0400,0115 | D      |                        | Certificate of Signer
0400,0310 | X      | L=C F=K                | Certified Timestamp
0400,0402 | X      |                        | Referenced Digital Signature Sequence
0400,0403 | X      |                        | Referenced SOP Instance MAC Sequence
0400,0404 | X      |                        | MAC
0400,0550 | X      |                        | Modified Attributes Sequence
0400,0551 | X      |                        | Nonconforming Modified Attributes Sequence
0400,0552 | X      |                        | Nonconforming Data Element Value
0400,0561 | X      |                        | Original Attributes Sequence
0400,0562 | D      | L=C F=K                | Attribute Modification DateTime
0400,0563 | D      | D=K                    | Modifying System
0400,0564 | Z      | I=K                    | Source of Previous Values
0400,0565 | D      | C=C                    | Reason for the Attribute Modification
0400,0600 | X      |                        | Instance Origin Status
2030,0020 | X      |                        | Text String
2100,0040 | X      | L=C F=K                | Creation Date
2100,0050 | X      | L=C F=K                | Creation Time
2100,0070 | X      | D=C                    | Originator
2100,0140 | D      | D=C                    | Destination AE
2200,0002 | X/Z    | C=C                    | Label Text
2200,0005 | X/Z    |                        | Barcode Value
3002,0121 | X      | C=C                    | Position Acquisition Template Name
3002,0123 | X      | C=C                    | Position Acquisition Template Description
3006,0002 | D      | C=C                    | Structure Set Label
3006,0004 | X      | C=C                    | Structure Set Name
3006,0006 | X      | C=C                    | Structure Set Description
3006,0008 | Z      | L=C F=K                | Structure Set Date
3006,0009 | Z      | L=C F=K                | Structure Set Time
3006,0024 | U      | U=K                    | Referenced Frame of Reference UID
3006,0026 | Z      | C=C                    | ROI Name
3006,0028 | X      | C=C                    | ROI Description
3006,002D | X      | L=C F=K                | ROI DateTime
3006,002E | X      | L=C F=K                | ROI Observation DateTime
3006,0038 | X      | C=C                    | ROI Generation Description
3006,004D | X      |                        | ROI Creator Sequence
3006,004E | X      |                        | ROI Interpreter Sequence
3006,0085 | X      | C=C                    | ROI Observation Label
3006,0088 | X      | C=C                    | ROI Observation Description
3006,00A6 | Z      |                        | ROI Interpreter
3006,00C2 | U      | U=K                    | Related Frame of Reference UID
3008,0024 | D      | L=C F=K                | Treatment Control Point Date
3008,0025 | D      | L=C F=K                | Treatment Control Point Time
3008,0054 | X/D    | L=C F=K                | First Treatment Date
3008,0056 | X/D    | L=C F=K                | Most Recent Treatment Date
3008,0105 | X/Z    | D=K                    | Source Serial Number
3008,0162 | D      | L=C F=K                | Safe Position Exit Date
3008,0164 | D      | L=C F=K                | Safe Position Exit Time
3008,0166 | D      | L=C F=K                | Safe Position Return Date
3008,0168 | D      | L=C F=K                | Safe Position Return Time
3008,0250 | X/D    | L=C F=K                | Treatment Date
3008,0251 | X/D    | L=C F=K                | Treatment Time
300A,0002 | D      | C=C                    | RT Plan Label
300A,0003 | X      | C=C                    | RT Plan Name
300A,0004 | X      | C=C                    | RT Plan Description
300A,0006 | X/D    | L=C F=K                | RT Plan Date
300A,0007 | X/D    | L=C F=K                | RT Plan Time
300A,000B | X      | C=C                    | Treatment Sites
300A,000E | X      | C=C                    | Prescription Description
300A,0013 | U      | U=K                    | Dose Reference UID
300A,0016 | X      | C=C                    | Dose Reference Description
300A,0072 | X      | C=C                    | Fraction Group Description
300A,0083 | U      | U=K                    | Referenced Dose Reference UID
300A,00B2 | X/Z    | D=K                    | Treatment Machine Name
300A,00C3 | X      | C=C                    | Beam Description
300A,00DD | X      | C=C                    | Bolus Description
300A,0196 | X      | C=C                    | Fixation Device Description
300A,01A6 | X      | C=C                    | Shielding Device Description
300A,01B2 | X      | C=C                    | Setup Technique Description
300A,0216 | X      | D=K                    | Source Manufacturer
300A,022C | D      | L=C F=K                | Source Strength Reference Date
300A,022E | D      | L=C F=K                | Source Strength Reference Time
300A,02EB | X      | C=C                    | Compensator Description
300A,0608 | D      | C=C                    | Treatment Position Group Label
300A,0609 | U      | U=K                    | Treatment Position Group UID
300A,0611 | Z      |                        | RT Accessory Holder Slot ID
300A,0615 | Z      |                        | RT Accessory Device Slot ID
300A,0619 | D      | C=C                    | Radiation Dose Identification Label
300A,0623 | D      | C=C                    | Radiation Dose In-Vivo Measurement Label
300A,062A | D      | C=C                    | RT Tolerance Set Label
300A,0650 | U      | U=K                    | Patient Setup UID
300A,0676 | X      | C=C                    | Equipment Frame of Reference Description
300A,067C | D      | C=C                    | Radiation Generation Mode Label
300A,067D | Z      | C=C                    | Radiation Generation Mode Description
300A,0700 | U      | U=K                    | Treatment Session UID
300A,0734 | D      | C=C                    | Treatment Tolerance Violation Description
300A,0736 | D      | L=C F=K                | Treatment Tolerance Violation DateTime
300A,073A | D      | L=C F=K                | Recorded RT Control Point DateTime
300A,0741 | D      | L=C F=K                | Interlock DateTime
300A,0742 | D      | C=C                    | Interlock Description
300A,0760 | D      | L=C F=K                | Override DateTime
300A,0783 | D      | C=C                    | Interlock Origin Description
300A,0785 | U      | U=K                    | Referenced Treatment Position Group UID
300A,078E | X      | C=C                    | Patient Treatment Preparation Procedure Parameter Description
300A,0792 | X      | C=C                    | Patient Treatment Preparation Method Description
300A,0794 | X      | C=C                    | Patient Setup Photo Description
300A,079A | X      | C=C                    | Displacement Reference Label
300C,0113 | X      | C=C                    | Reason for Omission Description
300C,0127 | D      | L=C F=K D=K            | Beam Hold Transition DateTime
300E,0004 | Z      | L=C F=K                | Review Date
300E,0005 | Z      | L=C F=K                | Review Time
300E,0008 | X/Z    |                        | Reviewer Name
3010,0006 | U      | U=K                    | Conceptual Volume UID
3010,000B | U      | U=K                    | Referenced Conceptual Volume UID
3010,000F | Z      | C=C                    | Conceptual Volume Combination Description
3010,0013 | U      | U=K                    | Constituent Conceptual Volume UID
3010,0015 | U      | U=K                    | Source Conceptual Volume UID
3010,0017 | Z      | C=C                    | Conceptual Volume Description
3010,001B | Z      |                        | Device Alternate Identifier
3010,002D | D      | D=K                    | Device Label
3010,0031 | U      | U=K                    | Referenced Fiducials UID
3010,0033 | D      | C=C                    | User Content Label
3010,0034 | D      | C=C                    | User Content Long Label
3010,0035 | D      | C=C                    | Entity Label
3010,0036 | X      | C=C                    | Entity Name
3010,0037 | X      | C=C                    | Entity Description
3010,0038 | D      | C=C                    | Entity Long Label
3010,003B | U      | U=K                    | RT Treatment Phase UID
3010,0043 | Z      | D=K                    | Manufacturer's Device Identifier
3010,004C | X/D    | L=C F=K                | Intended Phase Start Date
3010,004D | X/D    | L=C F=K                | Intended Phase End Date
3010,0054 | D      | C=C                    | RT Prescription Label
3010,0056 | X/D    | C=C                    | RT Treatment Approach Label
3010,005A | Z      | C=C                    | RT Physician Intent Narrative
3010,005C | Z      | C=C                    | Reason for Superseding
3010,0061 | X      | C=C                    | Prior Treatment Dose Description
3010,006E | U      | U=K                    | Dosimetric Objective UID
3010,006F | U      | U=K                    | Referenced Dosimetric Objective UID
3010,0077 | X/D    | C=C                    | Treatment Site
3010,007A | Z      | C=C                    | Treatment Technique Notes
3010,007B | Z      | C=C                    | Prescription Notes
3010,007F | Z      | C=C                    | Fractionation Notes
3010,0081 | Z      | C=C                    | Prescription Notes Sequence
3010,0085 | X      | L=C F=K                | Intended Fraction Start Time
4000,0010 | X      |                        | Arbitrary
4000,4000 | X      |                        | Text Comments
4008,0040 | X      |                        | Results ID
4008,0042 | X      |                        | Results ID Issuer
4008,0100 | X      | L=C F=K                | Interpretation Recorded Date
4008,0101 | X      | L=C F=K                | Interpretation Recorded Time
4008,0102 | X      |                        | Interpretation Recorder
4008,0108 | X      | L=C F=K                | Interpretation Transcription Date
4008,0109 | X      | L=C F=K                | Interpretation Transcription Time
4008,010A | X      |                        | Interpretation Transcriber
4008,010B | X      | C=C                    | Interpretation Text
4008,010C | X      |                        | Interpretation Author
4008,0111 | X      |                        | Interpretation Approver Sequence
4008,0112 | X      | L=C F=K                | Interpretation Approval Date
4008,0113 | X      | L=C F=K                | Interpretation Approval Time
4008,0114 | X      |                        | Physician Approving Interpretation
4008,0115 | X      | C=C                    | Interpretation Diagnosis Description
4008,0118 | X      |                        | Results Distribution List Sequence
4008,0119 | X      |                        | Distribution Name
4008,011A | X      |                        | Distribution Address
4008,0200 | X      |                        | Interpretation ID
4008,0202 | X      |                        | Interpretation ID Issuer
4008,0300 | X      | C=C                    | Impressions
4008,4000 | X      | C=C                    | Results Comments
50XX,XXXX | X      | G=C                    | Curve Data
60XX,3000 | X      | G=C                    | Overlay Data
60XX,4000 | X      | G=C                    | Overlay Comments
FFFA,FFFA | X      |                        | Digital Signatures Sequence
FFFC,FFFC | X      |                        | Data Set Trailing Padding
gggg,eeee | X      | V=C                    | Private Attributes
"""
