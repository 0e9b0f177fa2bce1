"""The word lists of the offline translations (`anchors.translations`): the stock names, places and nouns
that stand in for a term, the longer name lists of `anchors.names: pool`, and the words that tell a name's
kind (titles, place prepositions and verbs, place nouns)."""

from __future__ import annotations

FIRST_NAMES = ("Jon", "Tom", "Ben", "Sam", "Anna", "Emma", "Kate", "Lucy", "Mark", "Paul", "Peter", "Mary", "Jack",
               "Alice", "David", "Sarah", "James", "Laura", "Henry", "Clara", "Adam", "Grace", "Simon", "Ellen",
               "Martin", "Julia", "Oliver", "Nora", "Walter", "Rose")
SURNAMES = ("Smith", "Carter", "Baker", "Wilson", "Turner", "Green", "Brown", "Taylor", "Walker", "Hill", "Cooper",
            "Ward", "Parker", "Morris", "Bennett", "Hughes", "Foster", "Reed", "Harper", "Fisher", "Mason", "Palmer",
            "Graham", "Porter", "Lawson", "Grant", "Barnes", "Fleming", "Dixon", "Hayes")
# the longer lists `anchors.names: pool` ranks: the stock names above and 40 more common English names each
POOL_FIRST_NAMES = FIRST_NAMES + (
    "John", "George", "William", "Robert", "Charles", "Edward", "Thomas", "Richard", "Frank", "Arthur", "Albert",
    "Harold", "Frederick", "Michael", "Daniel", "Stephen", "Andrew", "Philip", "Hugh", "Ralph", "Elizabeth",
    "Margaret", "Helen", "Jane", "Susan", "Beatrice", "Catherine", "Emily", "Louise", "Edith", "Dorothy", "Agnes",
    "Martha", "Ruth", "Mabel", "Harriet", "Lily", "Violet", "Amy", "Jenny")
POOL_SURNAMES = SURNAMES + (
    "Jones", "Johnson", "Williams", "Davies", "Evans", "Norris", "Roberts", "Robinson", "Wright", "Thompson",
    "Moore", "Kelly", "Price", "Gibson", "Jackson", "Harris", "Lewis", "Allen", "Warren", "Scott", "Mitchell",
    "Dawson", "Adams", "Campbell", "Anderson", "Stewart", "Clark", "Phillips", "Marshall", "Hodges", "Reeves",
    "Murray", "Collins", "Russell", "Shaw", "Chapman", "Webb", "Lloyd", "Owen", "Holt")
PLACES = ("Ashford", "Millbrook", "Westbury", "Oakham", "Redhill", "Fairview", "Brookside", "Stonebridge",
          "Elmwood", "Greenfield")
NOUNS = ("thing", "object", "device", "stuff", "item", "tool")
TITLES = {"Mr", "Mrs", "Miss", "Ms", "Dr", "Professor", "Uncle", "Aunt", "Madam", "Sir", "Lady", "Lord", "King",
          "Queen", "Prince", "Princess", "Captain", "Master", "Mistress", "Father", "Mother", "Saint", "Monsieur",
          "Madame", "Mademoiselle", "Herr", "Frau", "Signor", "Signora", "Count", "Countess", "Duke", "Duchess",
          "Baron", "Baroness", "Inspector", "Doctor", "Colonel", "Major", "Reverend", "Mister"}
# a word of a multi-word name rarer than this in English (wordfreq; `Sherlock` 5e-6) is the target's own, not an
# ordinary word (`Wicked` 1e-5, `Street` 2e-4), and takes an ordinary name when it has no translation
RARE_WORD = 7e-6
PLACE_WORDS = {"in", "at", "to", "from", "into", "towards", "toward", "through", "near", "reach", "reached",
               "leave", "left", "visit", "visited"}

# ordinary nouns that make a capitalised phrase a place or an institution rather than a person (`Baker Street`)
PLACE_NOUNS = frozenset({"Street", "Square", "Road", "Lane", "Avenue", "Lodge", "Court", "Place", "Hall", "House",
                         "Park", "Gardens", "Terrace", "Row", "Bridge", "Station", "Hotel", "Church", "Abbey",
                         "Castle", "Tower", "Hill", "Inn", "Club", "Bank", "Office", "School", "College", "Academy",
                         "River", "Lake", "Forest", "Wood", "Island", "Valley", "Alley", "Way", "Cross", "City",
                         "Town", "Village", "County", "Kingdom", "Empire", "Palace", "Manor", "Farm", "Mews",
                         "Circus", "Crescent", "Market", "Company", "League", "Society", "Ministry", "Express", "Drive",
                         "Yard", "Garden", "Gate", "Close", "Quay", "Wharf", "Dock", "Port", "Bay",
                         "States", "Republic", "Union", "Times", "Gazette", "Post", "Herald"})
