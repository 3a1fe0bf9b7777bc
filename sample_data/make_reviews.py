#!/usr/bin/env python3
"""Generate sample_data/reviews.csv: 300 hand-written product reviews (EN + ZH).

Standard library only and fully deterministic: the review texts below are
hand-written data; the script only parses them, shuffles them with a fixed
seed (so languages, products and labels are interleaved), assigns ids
R0001..R0300 and writes the CSV.

Run from the repo root:  python sample_data/make_reviews.py

Data format of REVIEWS below:
    ## en | ## zh            -> sets the language of the following records
    @@ <rating> <label> [pad] | <product>
    <review text, may span several lines (embedded newlines are kept)>
"pad" adds one leading and one trailing space to the text (a CSV edge case
that would not survive editors stripping trailing whitespace in this file).
"""

import csv
import random
from collections import Counter
from pathlib import Path

SEED = 20240601
OUT = Path(__file__).resolve().parent / "reviews.csv"
COLUMNS = ["review_id", "product", "lang", "rating", "text", "gold_label"]

REVIEWS = r"""
## en

@@ 5 positive | Wireless Earbuds
Love these. Battery lasts all day, pairing took 2 seconds, and they actually stay in my ears when I run.

@@ 5 positive | Air Fryer 5L
Honestly the best kitchen purchase I've made in years. Wings, fries, leftover pizza, everything comes out crispy. Basket is dishwasher safe too 👍

@@ 4 positive | USB-C Cable 2m
works perfectly, charges fast. braided cable feels sturdy

@@ 5 positive | Cast Iron Skillet
Came pre-seasoned and it shows.
First thing I cooked was cornbread and it slid right out.
Heavy, but that's the point. Will last longer than me.

@@ 5 positive | Picture Book - The Sleepy Owl
My daughter makes me read "The Sleepy Owl" every single night. Every. Single. Night. Lovely illustrations, and the rhymes don't get annoying, which is saying something.

@@ 5 positive | Running Shoes
Great cushioning, true to size. Did a half marathon in them last weekend with zero blisters 🔥

@@ 4 positive | Bluetooth Speaker
Sound is surprisingly full for the size. Bass is a bit weak at high volume but for the price I can't complain. Recommend.

@@ 5 positive | Mechanical Keyboard
Clicky, satisfying, and the RGB is tasteful, not a disco. The {Fn} layer took a day to learn but now I love it.

@@ 5 positive | Hoodie
super soft, didnt shrink in the wash, color is exactly like the pics. ordered a second one

@@ 5 positive | Chef's Knife 8"
Sharp out of the box, sliced a tomato paper thin. The 8" blade is the perfect size for my small kitchen.

@@ 4 positive | Power Bank 20000mAh
Charges my phone about 4 times. It's heavy-ish, but it's a brick of battery, what did I expect. Solid.

@@ 5 positive | Jigsaw Puzzle 1000 pcs
Pieces fit snugly, no dust in the box, and the picture is gorgeous. Took me and my mom two weekends. Already ordered another from the same brand.

@@ 4 positive | French Press
Makes a great cup. Glass feels a little thin so I'm careful with it, but no grounds in my coffee which is more than I can say for my old one.

@@ 5 positive | Board Game - Harbor Traders
Our new family favourite! Easy to teach, games take about 45 min, and my 10yo beats us regularly. The "trade" rule creates so much table talk 😂

@@ 4 positive | Smartwatch
Does everything I need: steps, sleep, notifications. Battery is 5 days for me. App is a bit clunky but the watch itself is great.

@@ 5 positive | Wool Socks (3 pack)
Warm without being sweaty. Wore them hiking in the snow, toes stayed toasty. Worth every penny.

@@ 5 positive | Rice Cooker
Perfect rice every time, even brown rice. The keep-warm function is a lifesaver on busy nights. Cleans up easily.

@@ 5 positive | Laptop Stand
My neck thanks me. Sturdy aluminum, folds flat, fits in my backpack.

@@ 5 positive | Plush Teddy Bear
Bought for my niece's first birthday, she won't let go of it. Very soft, stitching is solid, survived the washing machine twice.

@@ 5 positive | E-Reader
Upgraded from a 6-year-old model.

Pros: screen is crisp, warm light is great at night, battery lasts weeks.
Cons: none really, maybe the official case is overpriced.

Would buy again.

@@ 4 positive | Electric Kettle
Boils fast and shuts off on its own. A bit loud, but i'm fine with it

@@ 5 positive | Yoga Mat
Grippy even in hot yoga. No weird rubber smell after the first day. Love the color 💜

@@ 5 positive | Winter Jacket
Wore it at -20°C in Montreal and was fine with just a t-shirt underneath. Hood is big enough for a beanie. Pockets are fleece-lined, chef's kiss.

@@ 4 positive | Cookbook - Weeknight Dinners
Good recipes, mostly under 30 min like promised. A few need ingredients I couldn't find locally, but I've made about 12 so far and they were all hits.

@@ 5 positive | RC Car
My son (8) is obsessed. It's fast, survived crashing into the fence like 50 times, and the battery lasts about 20 min. Get a spare battery!

@@ 4 positive | Desk Lamp
Nice warm/cool adjustment, touch controls work. Base is a bit light so it tips if you bump it hard.

@@ 5 positive | Noise Cancelling Headphones
Took these on a 12h flight. Engine noise basically gone. Comfortable enough to sleep in. 10/10 would recommend 👍👍

@@ 5 positive | Blender
Crushes ice like nothing. Smoothies are actually smooth now, no chunks of kale lol

@@ 4 positive | Slim Fit Jeans
Fit is great, stretchy enough to sit comfortably. Length runs a little long, had them hemmed. Otherwise very happy.

@@ 5 positive | Stainless Water Bottle
Ice still in it after 24 hours in a hot car. Doesn't leak in my bag. I've dropped it a bunch, only a small dent.

@@ 5 positive | Building Blocks Set
1200 pieces, instructions were clear and every bag was numbered. Compatible with the big-name brand bricks we already had. Great value, definately recommend.

@@ 4 positive | Webcam 1080p
Huge upgrade from my laptop's built-in camera. Colors are a bit warm but the autofocus is quick. Plug and play on Windows and Mac.

@@ 5 positive | Novel - The Glass Harbor
Couldn't put it down, stayed up till 3am to finish. The twist in part two got me good. Already recommended it to my book club.

@@ 4 positive | Nonstick Frying Pan
Eggs slide right off. We'll see how long the coating lasts but so far so good after two months.

@@ 5 positive | Rain Jacket
Got caught in a proper downpour, stayed completely dry. Packs into its own pocket. Love it

@@ 5 positive | Robot Vacuum
Named it Roberto. He picks up an absurd amount of dog hair every day. Maps the house, avoids the stairs. Best thing I bought this year.

@@ 4 positive | Electric Toothbrush
Teeth feel dentist-clean. The 2 min timer is handy. Charging stand is a bit bulky.

@@ 5 positive | Wooden Train Set
Quality wood, no splinters, paint hasn't chipped. My toddler plays with it for hours, which = I get to drink my coffee while it's hot ☕

@@ 5 positive | Phone Case
Dropped my phone down the stairs (don't ask), not a scratch. Buttons are still clicky. Great case.

@@ 4 positive | Coffee Grinder
Consistent grind, easy to adjust. Louder than I'd like at 6am but the coffee is noticeably better than pre-ground.

@@ 4 positive | T-Shirt 3-Pack
good basic tees, thick cotton not see-through. fits true to size

@@ 5 positive | Mini Drone
For a beginner drone this is awesome. Hover is stable, camera is decent for the price, and the app is easy. Had a blast at the beach.

@@ 5 positive | Bedsheet Set (Queen)
Soft, cool, and they got softer after washing. Deep pockets actually fit our thick mattress. Sleeping like a baby.

@@ 5 positive | Mixing Bowls with Lids
nesting set saves so much cupboard space, lids fit tight. perfect

@@ 5 positive | Backpack 25L
Fits my 15" laptop, lunch, gym clothes and still has room. Straps are comfortable and there's a hidden pocket for the passport. Used it on a 3 week trip, zero issues.

@@ 4 positive | Wireless Mouse
Quiet clicks, good for the office. Battery lasts months. Scroll wheel feels a touch cheap but works fine.

@@ 5 positive | Canvas Sneakers
Cute, comfy, go with everything. Got so many compliments! 😍

@@ 4 positive | Toaster 2-Slice
Toasts evenly, which my old toaster could never do. Bagel setting is a nice touch.

@@ 5 positive | Python Basics (book)
Clear explanations and exercises that actually build on each other. I went from zero to writing little scripts for work. Recommended for total beginners.

@@ 4 positive | Slime Making Kit
Kids had a blast. Messy, yes, but that's the whole point. Comes with enough glue for maybe 8 batches.

@@ 5 positive | Rainfall Shower Head
Water pressure went from sad trickle to spa. Installed in 5 minutes with no tools.

@@ 5 positive | Knit Scarf
Beautiful color, soft and not itchy at all. Bought one for my sister too.

@@ 4 positive | Smart Plug
Setup took a couple of tries (2.4GHz only!), but once connected it's been rock solid. Love turning the lamp on from bed.

@@ 5 positive | Travel Umbrella
Survived a windy day in Chicago which is basically a miracle for an umbrella. Auto open/close works great.

@@ 4 positive | Insulated Lunch Box
Keeps food warm till noon. Compartments are handy, seal is good, no soup leaks so far

@@ 5 positive | Floral Midi Dress
Wore it to a wedding, got asked "where is that from??" like five times. Fabric is flowy and it has POCKETS.

@@ 5 positive | Adult Colouring Book
Intricate designs, thick paper so markers don't bleed through. Very relaxing after work.

@@ 5 positive | HDMI 2.1 Cable
4K 120Hz works on my PS5, no flicker. It's a cable, it does cable things, 5 stars.

@@ 4 positive | Baseball Cap
Nice fit, adjustable strap. Color faded slightly after a summer but still looks good.

@@ 5 positive | Ceramic Plant Pots (set of 3)
Gorgeous pots, drainage holes included (yes!!). My monstera looks fancy now.

@@ 4 positive | Silicone Spatula Set
Heads are heat resistant, handles feel sturdy. One is a weird size I never use, but the rest I use daily.

@@ 4 positive | Kids Tablet
Parental controls are easy and the case is basically indestructible. Screen isn't the sharpest but my 5yo doesn't care.

@@ 5 positive | Memory Foam Pillow
Finally no more neck pain in the morning. Took a night to get used to but now I'm a convert.

@@ 5 positive | Bluetooth Speaker
Took it to the pool, it got splashed and dunked, still works perfectly. Sound is loud and clear 🔥🔥

@@ 4 positive | Air Fryer 5L
Update after 3 months:
still using it almost daily. Non-stick basket is holding up.
Only thing: the timer beep is super quiet, I miss it sometimes.

@@ 4 positive | Wireless Earbuds
Not audiophile level but for commuting they're great. Noise cancelling is decent, case is tiny. Happy with them.

@@ 5 positive | Jigsaw Puzzle 500 pcs
Perfect for a rainy Sunday. Pieces are thick and the finish doesn't glare.

@@ 4 positive | Running Shoes
Really comfortable after a short break-in period. Not bad at all for the price, I'd buy them again.

@@ 5 positive | Cast Iron Skillet
my grandma approved and she's used cast iron since 1960. that's all you need to know

@@ 5 positive | Power Bank 20000mAh
Charged phone + tablet at the same time on a camping trip. Still had juice left on day 3. Excellent.

@@ 5 positive | Smartwatch
Honestly didn't expect much for this price but wow. Heart rate matches my chest strap within 2 bpm.

@@ 4 positive | Novel - The Glass Harbor
Slow start (I almost gave up around chapter 5) but the second half is fantastic. Glad I stuck with it.

@@ 4 positive | Board Game - Harbor Traders
Fun with 4 players, a bit dull with 2. Components are high quality. Overall a keeper.

@@ 5 positive | Chef's Knife 8"
I'm a line cook and I'd happily use this at work. Holds an edge, balanced, comfortable grip. Unreal for the price.

@@ 4 positive | Hoodie
Warm and cozy 😊 sleeves are a bit long on me (5'3") but I like the sweater-paws look honestly

@@ 5 positive | Electric Kettle
Temperature presets for green tea vs black tea. Didn't know I needed this, now I can't live without it.

@@ 4 positive | Wool Socks (3 pack)
Very warm. Took a star off because one pair already has a tiny hole at the heel after a month, but the other two are fine.

@@ 4 positive | Robot Vacuum
Does a good job on hardwood, struggles a bit on the thick rug. App schedule works great. Would recommend for pet owners.

@@ 5 positive | Building Blocks Set
Built the castle with my dad over Christmas. Great quality, bricks click firmly. 👍

@@ 5 positive | Webcam 1080p
Looks so much better in meetings now, my boss asked if I got a new camera lol. yes. yes I did.

@@ 5 positive | Slim Fit Jeans
FINALLY jeans that fit my waist and my thighs. Buying two more colors.

@@ 1 negative | Wireless Earbuds
Left earbud stopped charging after 3 weeks. Contacted support, no reply. Waste of money.

@@ 2 negative | Air Fryer 5L
Basket coating started peeling after a month. Not great when it ends up in your food. Returning it.

@@ 1 negative | USB-C Cable 2m
Broken after two weeks. The connector just snapped off inside my phone port 😡

@@ 1 negative | 65W Phone Charger
Gets super hot and charges slower than my old 20W one. Something is wrong with this thing, I don't trust it near my bed.

@@ 2 negative | Smartwatch
Oh great, another watch that loses Bluetooth connection every hour. Exactly what I wanted. Notifications come in 10 minutes late, if at all.

@@ 2 negative | Hoodie
Shrunk two sizes after the first wash (cold water, hung dry!!). Now it fits my 12 year old.

@@ 1 negative | Bluetooth Speaker
Worked for 2 days.
Then it wouldn't turn on.
Then it wouldn't charge.
Now it's a very expensive paperweight. Refund please.

@@ 1 negative | Kids Tablet
The "kid-proof" screen cracked the first time it fell off the couch. Couch height. Terrible.

@@ 2 negative | Blender
Loud, leaks from the bottom seal, and there's a smell of burning motor every time I make a smoothie. Disappointed.

@@ 2 negative | Running Shoes
Sole started separating after ~100 km. For shoes at this price that is unacceptable.

@@ 1 negative | Rice Cooker
Bottom layer of rice burns every. single. time. Tried less water, more water, different rice. Nope.

@@ 2 negative | Novel - The Glass Harbor
Everyone raved about this book so maybe my expectations were too high, but the characters were flat and the ending made zero sense.

@@ 1 negative | Nonstick Frying Pan
Nonstick? More like always-stick. Eggs glued to it on day one, and yes I used butter.

@@ 2 negative | Robot Vacuum
Gets stuck under the couch every day and then beeps for help. I spend more time rescuing it than I would vacuuming myself.

@@ 2 negative | Winter Jacket
Zipper broke the second week. The jacket is warm, but what good is that if it won't close? Sent it back.

@@ 1 negative | Slim Fit Jeans
Sizing is completely off, ordered my usual 32 and couldn't even get them over my hips. Return shipping costs more than the jeans. Terrible experience.

@@ 1 negative | RC Car
Remote stopped working after 10 minutes. My kid cried. Thanks a lot.

@@ 2 negative | Mechanical Keyboard
Two keys ("E" and space) started double typing within a month. Thhhis is what it looks like. Annoying.

@@ 2 negative | Plush Teddy Bear
Much smaller than the pictures suggest and one eye was glued on crooked. Kind of creepy honestly.

@@ 1 negative | Power Bank 20000mAh
Advertised 20000mAh, barely charges my phone twice. Feels like 8000 at best. Misleading.

@@ 1 negative | French Press
Glass cracked the first time I poured boiling water in. Who makes a french press that can't handle hot water??

@@ 2 negative | Desk Lamp
Flickers at low brightness, gives me a headache. Fine on max but that's too bright for night.

@@ 2 negative | Stainless Water Bottle
Leaks. Not a lot, but enough to soak my notebook twice. Also the paint chips if you look at it wrong.

@@ 2 negative | Board Game - Harbor Traders
Rulebook is a mess, we spent 40 minutes trying to figure out how combat works and gave up. Components are nice though.

@@ 1 negative | Electric Toothbrush
Battery died after 5 months and it can't be replaced. So it's trash now. Very disappointed.

@@ 2 negative | Laptop Stand
Wobbly when typing. Every keystroke makes the screen bounce. Useless for actual work.

@@ 1 negative | Webcam 1080p
Image is grainy and washed out, looks worse than my 2015 laptop cam. Mic picks up nothing. Returned.

@@ 2 negative | Chef's Knife 8"
Sharp at first but dulled within a month, and there are rust spots near the handle already. Not so stainless I guess.

@@ 2 negative | Floral Midi Dress
The photo shows a flowy silk-like dress. What arrived was stiff polyester that crackles when you walk. "Midi" length is more like mini on me and I'm 5'6".

@@ 2 negative | Cookbook - Weeknight Dinners
Half the recipes need a stand mixer, sous vide, or a blowtorch. Not exactly 'weeknight'. Photos are pretty though.

@@ 1 negative | Toaster 2-Slice
One side burns, the other side is still bread. Great toaster if you only want to eat half of each slice. 🙃

@@ 1 negative | Mini Drone
Flew away on its first flight and never came back. The 'return home' feature apparently means return to someone else's home.

@@ 2 negative | Bedsheet Set (Queen)
Pilled after two washes. Feels like sleeping on sandpaper now.

@@ 1 negative | Electric Kettle
Plastic taste in the water even after boiling and dumping it 10 times. Can't drink tea that tastes like a toy. Returned.

@@ 2 negative | Phone Case
Looks nice but the buttons are super stiff, I have to press volume like 3 times. Also yellowed in a month.

@@ 2 negative | Canvas Sneakers
The glue smell is overpowering and after a week they gave me blisters on both heels. Not for walking, I guess just for looking at.

@@ 2 negative | Wooden Train Set
Tracks don't connect properly, there's a gap that derails the trains every lap. My son gave up on it.

@@ 2 negative | E-Reader
Screen froze twice while reading and needed a hard reset. Also the page turn buttons feel cheap. Meh, expected better.

@@ 1 negative | Coffee Grinder
Grind is all over the place, dust and boulders in the same batch. Then the motor died. Garbage.

@@ 2 negative | Building Blocks Set
Bag 7 was missing.

Customer service said they'd send it, that was 5 weeks ago. Still waiting. Kid has a half-built pirate ship on his desk.

@@ 1 negative | Backpack 25L
Strap ripped off on day 3 while carrying a laptop and a water bottle. Not exactly heavy. Waste of money 💔

@@ 1 negative | Smart Plug
Disconnects from wifi every night, and the app wants me to make an account and accept 14 pages of terms just to turn on a lamp. No thanks.

@@ 2 negative | Yoga Mat
Slippery as soon as I start sweating, and it has a strong chemical smell that hasn't gone away after 2 weeks airing on the balcony.

@@ 2 negative | Noise Cancelling Headphones
Noise cancelling creates a weird pressure feeling and the headband hurts after an hour. Sound is OK but I can't wear them.

@@ 2 negative | Knit Scarf
Itchy. Sooo itchy. Says 'soft wool blend' on the tag, feels like a doormat.

@@ 1 negative | Slime Making Kit
The slime never got slimy, just a sticky puddle that ruined my carpet. Instructions were useless.

@@ 2 negative | Insulated Lunch Box
Lid seal leaked soup all over my work bag. Cleaned it up, tried again with yogurt, same thing.

@@ 2 negative | Python Basics (book)
Half the code examples don't run because they're written for an old version. Errata page is a 404. Frustrating for beginners.

@@ 1 negative | Rainfall Shower Head
Leaks from the connection no matter how much tape I use. And the pressure is worse than before. Returning.

@@ 1 negative | Travel Umbrella
Flipped inside out in a light breeze and two ribs snapped. Lasted one day.

@@ 2 negative | Wireless Mouse
Randomly lags and skips across the screen. Changed batteries, changed USB port, still happens. Not good for work.

@@ 2 negative | T-Shirt 3-Pack
After one wash the neck is all stretched out and wavy. Look like I've owned them 10 years.

@@ 2 negative | Memory Foam Pillow
Way too firm and tall, woke up with a stiff neck every day for a week. Not for side sleepers despite what the listing says.

@@ 1 negative | HDMI 2.1 Cable
Screen goes black every few minutes. Swapped back to my old cable, problem gone. So it's the cable. 1 star.

@@ 2 negative | Mixing Bowls with Lids
Lids don't fit after the first run through the dishwasher, they warped. Bowls themselves ok.

@@ 1 negative | Ceramic Plant Pots (set of 3)
Two of the three pots arrived shattered. The packaging was basically a paper bag. Waiting on a refund.

@@ 2 negative | Cast Iron Skillet
Listed as "pre-seasoned" but it rusted after the first wash (dried it right away). Had to strip and reseason it myself.

@@ 2 negative | Rain Jacket
Waterproof for about 10 minutes. After that my shoulders are soaked. Basically a windbreaker.

@@ 2 negative | Jigsaw Puzzle 1000 pcs
Lots of pieces are the exact same shape so you can't tell if they're right. And we were missing 3. Frustrating ending to 20 hours of work.

@@ 2 negative | Adult Colouring Book
Pages are printed on both sides so markers bleed through and ruin the next picture. Should've read the reviews first.

@@ 1 negative | Smartwatch
Battery "lasts 7 days", mine lasts about 20 hours. Support told me to turn off all the features. Then what's the point??

@@ 1 negative | Air Fryer 5L
Mine arrived with a dent and it rattles when running. Seller wants me to pay for return shipping. Never again.

@@ 1 negative | Novel - The Glass Harbor
DNF at page 80. Nothing happens. Just vibes and descriptions of fog.

@@ 3 neutral pad | USB-C Cable 2m
It's a cable. Charges my phone. Nothing special, nothing wrong.

@@ 3 neutral | Wireless Earbuds
Sound is fine, battery is fine. Fit is a bit loose for my ears. Average for the price.

@@ 3 neutral | Air Fryer 5L
Works as described. Smaller inside than I expected, so I cook in two batches for a family of four.

@@ 3 neutral | Hoodie
Decent hoodie. Color is slightly darker than the photo. Fabric is thinner than my other ones but okay for spring.

@@ 3 neutral | Novel - The Glass Harbor
It was fine. Some parts were really good, others dragged. Probably won't read the sequel but don't regret reading it.

@@ 3 neutral | Bluetooth Speaker
Good sound indoors, not loud enough for outdoors. Battery about 8 hours. It's okay.

@@ 3 neutral | Desk Lamp
Does the job. Light is bright enough to read. Arm is a bit stiff to adjust.

@@ 3 neutral | Slim Fit Jeans
Fit is ok, fabric is ok. Not my favorite pair but they'll do for everyday.

@@ 3 neutral | Rice Cooker
Cooks white rice fine.
Brown rice takes forever (~90 min).
Manual is only in tiny print. It's okay I guess.

@@ 3 neutral | Smartwatch
Some features are great (sleep tracking), some are useless (the 'stress score'). GPS takes a while to lock. Mixed feelings.

@@ 3 neutral | Picture Book - The Sleepy Owl
Cute pictures, story is very short. My son liked it for a week then moved on.

@@ 3 neutral | Board Game - Harbor Traders
Recieved on time, box was intact. Haven't played yet, will update.

@@ 3 neutral | Electric Kettle
Boils water. Lid opens a bit too fast and splashes sometimes. Otherwise no complaints, no praise.

@@ 3 neutral | Winter Jacket
Warm enough, but bulky and the sleeves are long. Keeping it because returning is a hassle.

@@ 3 neutral | Mechanical Keyboard
Not bad, not great. Switches feel fine, keycaps feel cheap. Software is Windows-only which is annoying on my Mac.

@@ 3 neutral | Power Bank 20000mAh
Charges what it says it will, slowly. No fast charging on the USB-A port. It's fine for emergencies.

@@ 3 neutral | Yoga Mat
Mat is fine. Thinner than I expected so my knees hurt a little in some poses. Color is nice.

@@ 3 neutral | RC Car
Fun for about a week, now it sits in the toy box. Works fine though, no defects.

@@ 3 neutral | Toaster 2-Slice
Average toaster. Takes about 3 min per batch on medium. The crumb tray is hard to slide out.

@@ 3 neutral | Wool Socks (3 pack)
Warm but thicker than expected, so they don't fit in my regular shoes. Good for boots only.

@@ 3 neutral | Cookbook - Weeknight Dinners
Some good recipes, some I'd never make. Nice photos. About what you'd expect.

@@ 3 neutral | Webcam 1080p
Picture quality is good in daylight, grainy at night. Clip is a bit loose on my monitor.

@@ 3 neutral | Plush Teddy Bear
It's a teddy bear. Soft, a bit smaller than I thought. Kid seems indifferent.

@@ 3 neutral | Canvas Sneakers
Run half a size small. Exchanged for a bigger size, the new pair is fine. Comfort is average.

@@ 3 neutral | Rainfall Shower Head
Slight improvement in pressure, nothing dramatic. Easy install.

@@ 3 neutral | Insulated Lunch Box
Arrived quick, used it twice so far, no issues yet. Bit bulky for my bag.

@@ 3 neutral | Nonstick Frying Pan
Cooks evenly. Handle gets warm. Too early to say how the coating holds up.

@@ 3 neutral | Laptop Stand
Stand works, but it only raises the laptop ~6", I wanted a bit more. Well made at least.

@@ 3 neutral | E-Reader
Good screen, but the store ecosystem locks you in. Works fine for what it is.

@@ 3 neutral | Coffee Grinder
Grind is okay for drip, not fine enough for espresso. Listing didn't say either way. Fine for me.

@@ 3 neutral | T-Shirt 3-Pack
Basic tees. One of the three colors is different from the photo. Otherwise as expected.

@@ 3 neutral | Mini Drone
Fun toy, not a real camera drone. 8 min battery. You get what you pay for.

@@ 3 neutral | Building Blocks Set
Compatible with most other bricks, though some pieces are a little tight. Instructions are OK. Decent alternative.

@@ 3 neutral | Bedsheet Set (Queen)
Nice color, a bit wrinkly out of the dryer. They're sheets 🤷

@@ 3 neutral | Robot Vacuum
Cleans ok but misses corners.
The app sometimes loses the map and starts over from scratch.
Not sure if I'd buy it again or not.

@@ 3 neutral | Smart Plug
Works most of the time. About once a week the app shows "Error {E-07}" and I have to re-pair it. Annoying but livable.

## zh

@@ 5 positive | 蓝牙耳机
音质很好，降噪效果也不错，戴久了耳朵不疼。性价比很高，推荐！

@@ 5 positive | 空气炸锅
买来炸鸡翅，外焦里嫩，不用放油也很香。清洗也方便，全家都喜欢😋

@@ 5 positive | 保温杯
早上装的热水到晚上还是烫的，颜值也高，很满意。

@@ 5 positive | 电饭煲
煮出来的米饭很香，还有锅巴模式，老妈说比原来那个好用多了。

@@ 4 positive | 加绒卫衣
面料挺舒服的，洗了两次没起球，就是袖子稍微有点长，整体不错。

@@ 5 positive | 儿童绘本
孩子每天睡前都要看，图画很精美，纸张也厚，不怕撕。

@@ 5 positive | 机械键盘
青轴手感很爽，打字噼里啪啦的，办公室同事可能不太喜欢哈哈。灯光好看，做工扎实👍

@@ 4 positive | 充电宝
容量挺足的，出差三天够用，就是有点重。

@@ 5 positive | 跑步鞋
穿着跑了十公里，脚一点都不累，鞋底很软，尺码标准，推荐！

@@ 5 positive | 羽绒服
在哈尔滨零下二十度穿也不冷，帽子的毛领很蓬松，物流也快，好评！

@@ 5 positive | 积木玩具
和大牌积木兼容，拼插很紧实，儿子拼了一下午不肯吃饭😂

@@ 4 positive | 智能手表
功能很多，睡眠监测挺准的，续航一周左右。表带有点硬，换了一个就好了。

@@ 5 positive | 不粘锅
煎蛋完全不粘，一点油就够了，锅也不重，老人用着也顺手。

@@ 5 positive | 小说《雾港》
一口气看完了，熬到凌晨三点。
后半部分的反转真的没想到！
已经推荐给朋友了。

@@ 4 positive | 榨汁机
打出来的果汁很细腻，声音稍微有点大，不过能接受。

@@ 5 positive | 牛仔裤
版型很好，显瘦显腿长，弹力也够，蹲下不勒。已经回购第二条了。

@@ 5 positive | 护眼台灯
光线柔和不刺眼，孩子写作业用正好，三档调光很方便。

@@ 5 positive | 毛绒玩具熊
超级软！女儿抱着睡觉不撒手，洗过一次也没变形💕

@@ 4 positive | 电动牙刷
刷得挺干净的，充一次电能用两周多。就是替换刷头有点贵。

@@ 5 positive | 手机壳
手感很好，摔了两次手机都没事，按键也灵敏。

@@ 5 positive | 拼图1000片
图案很漂亮，拼块切割精准，没有缺片，和老公拼了一个周末，很解压。

@@ 5 positive | 咖啡磨豆机
研磨很均匀，粗细好调，现磨的咖啡香太多了，早上的幸福感😊

@@ 4 positive | 瑜伽垫
防滑效果不错，厚度适中，刚拆开有一点点味道，晾两天就没了。

@@ 5 positive | 遥控赛车
速度很快，撞了好多次都没坏，儿子天天拿去小区玩，小朋友们都羡慕。

@@ 5 positive | 羊绒围巾
颜色很正，摸起来很柔软，不扎脖子，送给妈妈的，她很喜欢。

@@ 5 positive | 电热水壶
烧水很快，有保温功能，半夜冲奶粉特别方便，宝妈必备！

@@ 4 positive | 笔记本支架
铝合金的很结实，角度可调，颈椎舒服多了。就是折叠的时候有点紧。

@@ 5 positive | 扫地机器人
解放双手！！
家里两只猫，每天能吸出一大堆毛，以前一周拖三次地，现在一次就够。
APP设置也简单，强烈推荐。

@@ 4 positive | 家常菜谱
菜谱很实用，都是家常菜，步骤写得很清楚。照着做了几道，家人都说好吃。

@@ 5 positive | 静音无线鼠标
静音的，在图书馆用也不怕吵到别人，手感也好，电池很耐用。

@@ 4 positive | 纯棉T恤三件装
纯棉的，吸汗，三件才这个价，很划算。就是领口稍微有点松。

@@ 5 positive | 床上四件套
面料亲肤，睡着很舒服，洗了也不掉色，颜色比图片还好看。

@@ 5 positive | 蓝牙音箱
小小一个声音很大，低音也有，带去露营大家都说好。防水也靠谱🔥

@@ 5 positive | 菜刀
非常锋利，切肉丝很轻松，手柄握着也舒服，比超市买的好太多。

@@ 4 positive | 自动雨伞
伞面很大，两个人打也够，自动开合很方便，就是有点重。

@@ 5 positive | Python编程入门
零基础也能看懂，例子很贴近实际，跟着敲完代码就学会了，推荐给想入门的朋友。

@@ 5 positive | 木质小火车
木头很光滑，没有毛刺，漆也没有味道，给两岁宝宝玩很放心。

@@ 4 positive | 法压壶
做出来的咖啡口感很好，滤网很细，没有渣。玻璃稍微薄了点，用的时候小心就行。

@@ 5 positive | 双肩包
能装下15.6寸的电脑，隔层很多，背着也不累，上班通勤刚好。

@@ 4 positive | 运动袜
吸汗透气，跑步不磨脚，就是颜色只有黑白两种。

@@ 5 positive | 无线耳机
“真的香！”这是我室友试戴之后说的第一句话。连接稳定，延迟很低，打游戏也没问题。

@@ 4 positive | 空气炸锅
总体满意，做薯条和鸡翅都很好吃，就是容量小了点，一次只能做两个人的量。

@@ 5 positive | 碎花连衣裙
上身效果超级好看，面料垂坠感强，参加婚礼被好几个人问链接！

@@ 4 positive | 智能插座
配网有点麻烦，弄了好几次才连上，连上之后很稳定，定时开关挺好用。

@@ 5 positive | 陶瓷花盆
陶瓷质感很好，底部有排水孔，包装很用心，一个都没碎。

@@ 5 positive | 电子书阅读器
墨水屏看久了眼睛不累，续航超长，一个月充一次电，早就该买了！

@@ 5 positive | 棉拖鞋
本来没抱什么希望，结果出乎意料的好。很暖和，鞋底防滑，家里老人穿着也安全。

@@ 4 positive | 迷你无人机
作为入门款很不错，悬停稳，画质对得起价格。续航短了点，建议多买一块电池。

@@ 5 positive | 硅胶铲套装
耐高温，不伤锅，颜色也好看，厨房必备。

@@ 5 positive | 桌游
周末和朋友玩了一晚上，规则简单，欢乐度爆表🎲 下次聚会还玩！

@@ 4 positive | 儿童平板
护眼模式不错，家长管控功能也好用，就是屏幕分辨率一般，孩子用够了。

@@ 5 positive | 记忆棉枕头
软硬适中，睡了一周颈椎舒服多了，不错不错，还会回购。

@@ 4 positive | 帆布鞋
百搭，穿着舒服，刚开始有点磨脚，穿几天就好了。总体挺满意的。

@@ 5 positive | 保温饭盒
中午打开饭还是热的，密封性很好，汤也不会漏，上班族必备。

@@ 1 negative | 蓝牙耳机
用了不到一个月右耳就没声音了，联系客服一直推脱，垃圾产品，大家别买。

@@ 2 negative | 空气炸锅
预热时间很长，加热也不均匀，一边焦了一边还是生的，很失望。

@@ 1 negative | 数据线
充了两天就坏了，接口松动，根本充不进电。

@@ 2 negative | 加绒卫衣
洗了一次就严重掉色，把其他衣服都染蓝了😤

@@ 1 negative | 充电宝
充电的时候烫得吓人，不敢放在床边，而且自己充满要八个小时。已申请退货。

@@ 2 negative | 智能手表
心率测得一点都不准，坐着不动显示120，吓我一跳。续航也没宣传的那么长。

@@ 1 negative | 电饭煲
第一次用就糊底了。
第二次水放多了还是糊。
第三次直接跳闸。
退货！

@@ 2 negative | 跑步鞋
鞋底太硬，跑了三公里脚底板就疼，而且鞋码偏小，不太好。

@@ 1 negative | 牛仔裤
和图片完全不一样，颜色发灰，线头到处都是，穿上像买了十年的旧裤子。差评。

@@ 2 negative | 儿童绘本
印刷质量很差，有好几页颜色糊在一起，还有一股很重的油墨味，不敢给孩子看。

@@ 2 negative | 机械键盘
用了三周就有两个键连击，打“你好”出来“你你好”，很影响工作。

@@ 1 negative | 不粘锅
说好的不粘呢？用了不到一个月涂层就划花了，现在炒什么都粘，垃圾。

@@ 2 negative | 毛绒玩具熊
味道很大，放阳台晒了一周还有，收到的比图片小很多，有点失望。

@@ 2 negative | 扫地机器人
噪音太大了，晚上根本不敢开，而且经常撞家具，把桌腿都撞花了。

@@ 1 negative | 护眼台灯
用了十天就开始闪，眼睛受不了，客服让我自己找售后，服务太差了。

@@ 2 negative | 羽绒服
跑毛跑得厉害，穿一天黑裤子上全是白毛，拉链也不顺滑，这个价格不值。

@@ 1 negative | 遥控赛车
收到就是坏的，遥控器按了没反应，换了电池也不行，孩子哭了一晚上💔

@@ 2 negative | 保温杯
保温效果一般，四个小时就凉了，而且杯盖漏水，包里的书全湿了。

@@ 2 negative | 菜刀
用了两周就生锈了，刀刃也卷了，还不如家里用了十年的老刀。

@@ 2 negative | 手机壳
用了半个月就发黄了，而且边框太硬，按音量键很费劲。

@@ 1 negative | 电热水壶
用了一个月壶底就出现锈点，而且烧水的时候噪音特别大，像飞机起飞。

@@ 1 negative | 碎花连衣裙
质量太差了，面料很薄还透，做工粗糙，线头一堆。

卖家秀和买家秀差距太大了🙄 已退。

@@ 2 negative | 拼图1000片
图案印刷模糊，好多拼块颜色都差不多，根本分不清，拼了三天放弃了。

@@ 2 negative | 静音无线鼠标
经常断连，鼠标指针乱跳，换了电池也一样，用着很闹心。

@@ 1 negative | 双肩包
背了不到一周拉链就坏了，拉到一半卡住，里面的电脑差点掉出来，质量太差。

@@ 1 negative | 榨汁机
用了三次就不转了，杯子底部还漏水，果汁流了一桌子。申请退款中。

@@ 2 negative | 笔记本支架
打字的时候屏幕一直晃，根本没法用，螺丝也拧不紧。

@@ 2 negative | 电动牙刷
震动太强了，牙龈刷出血，最低档也受不了。不太适合牙齿敏感的人。

@@ 2 negative | 小说《雾港》
看了一半实在看不下去了，情节拖沓，人物也很单薄，不知道为什么评分这么高。

@@ 2 negative | 床上四件套
洗了一次就掉色，白色的枕套都染成粉色了，跟描述的“不掉色”完全不符。

@@ 1 negative | 咖啡磨豆机
粗细一点都不均匀，有粉有颗粒，清理也很麻烦，豆子卡在里面出不来，浪费钱。

@@ 1 negative | 自动雨伞
收到的时候伞骨就是弯的，撑开有一个角塌着，下雨天打着很尴尬。

@@ 2 negative | 智能插座
三天两头掉线，APP还要各种权限，连个灯都开不了，太失望了。

@@ 2 negative | 瑜伽垫
太薄了，跪着的时候膝盖硌得疼，而且边缘一卷起来就压不平。

@@ 2 negative | Python编程入门
排版很乱，代码和正文挤在一起，还有不少错别字，看着很累。

@@ 2 negative | 积木玩具
有好几个零件的颜色和说明书上不一样，而且拼插很松，一碰就散，孩子玩得很崩溃。

@@ 1 negative | 儿童平板
反应很慢，打开个动画片要等半天，内存也小，装几个APP就满了。

@@ 1 negative | 迷你无人机
图传一直卡顿，飞出去五十米就断连，说好的一键返航呢？几百块钱打水漂了。

@@ 2 negative | 帆布鞋
才穿了两周鞋面的线就开了，而且颜色和图片差很多，偏黄。

@@ 2 negative | 蓝牙音箱
声音还行，但是连接经常断，隔着一堵墙就没信号了。电池也不耐用。

@@ 1 negative | 法压壶
滤网用了几次就变形了，咖啡里全是渣，口感很差，这质量真是绝了。

@@ 1 negative | 空气炸锅
呵呵，“大容量”，放四个鸡翅就满了。还有异响，真是买了个寂寞。

@@ 3 neutral | 数据线
一般般吧，能充电，速度也就那样，没什么特别的。

@@ 3 neutral | 蓝牙耳机
音质还可以，就是戴久了耳朵有点胀。价格不贵，凑合用。

@@ 3 neutral | 加绒卫衣
衣服收到了，颜色比图片深一点，面料中规中矩，还没洗，洗了再来追评。

@@ 3 neutral | 电饭煲
煮饭还行，就是内胆涂层看着有点薄，不知道能用多久。

@@ 3 neutral | 智能手表
功能挺多的，但大部分用不上。续航三四天，表盘选择不多，中规中矩吧。

@@ 3 neutral | 儿童绘本
故事有点短，图画还可以，孩子看了两次就没兴趣了。

@@ 3 neutral | 保温杯
保温效果还行，就是有点重，杯口也小，放冰块不太方便。

@@ 3 neutral | 牛仔裤
尺码偏大一点，裤长正好，面料没有弹性，凑合穿。

@@ 3 neutral | 护眼台灯
亮度够用，调节不太灵敏，外观普通，对得起价格。

@@ 3 neutral | 拼图1000片
包装完好，还没开始拼，等拼完再来评价。

@@ 3 neutral | 充电宝
容量基本符合，充电速度一般，不支持快充，有点可惜。

@@ 3 neutral | 扫地机器人
优点：吸力可以，噪音不大。
缺点：边角扫不到，偶尔会迷路。
总体来说不好不坏吧。

@@ 3 neutral | 跑步鞋
穿着还可以，没有想象中那么软，不过也不磨脚。

@@ 3 neutral | 家常菜谱
菜谱挺多的，但有些调料不好买。照片好看，实用性一般。

@@ 3 neutral | 遥控赛车
孩子玩了几天就放一边了，车本身没什么问题。

@@ 3 neutral | 电热水壶
烧水速度正常，声音有点大，壶盖开关有点紧，能用。

@@ 3 neutral | 羽绒服
不算特别暖，上海的冬天穿够了，北方可能不行。款式还行。

@@ 3 neutral | 手机壳
还行吧，不惊艳也不难看，有点滑。

@@ 3 neutral | 小说《雾港》
前半部分很精彩，后半部分有点烂尾，总体来说还行，打发时间可以。

@@ 3 neutral | 静音无线鼠标
普通的鼠标，手感一般，用着没毛病，就是滚轮声音有点大。

@@ 3 neutral | 瑜伽垫
厚度可以，防滑一般，味道不大。这个价格也就这样了🤷‍♀️

@@ 3 neutral | 双肩包
物流很快，包的做工还行，就是比想象中小，装不下我的17寸电脑。

@@ 3 neutral | 积木玩具
拼起来有些地方有点紧，说明书还算清楚，和大牌比还是有差距，但价格便宜一半。

@@ 3 neutral | 咖啡磨豆机
磨手冲够用，磨意式不够细，声音有点大，说不上好也说不上差。
"""

RATINGS_FOR_LABEL = {"positive": {4, 5}, "negative": {1, 2}, "neutral": {3}}


def parse(block):
    """Parse the REVIEWS block into a list of dicts (without review_id)."""
    records, lang, cur = [], None, None

    def flush():
        if cur is not None:
            text = "\n".join(cur["lines"]).strip("\n")
            if cur["pad"]:
                text = " " + text + " "
            records.append({k: cur[k] for k in ("product", "lang", "rating", "gold_label")}
                           | {"text": text})

    for line in block.split("\n"):
        if line.startswith("## "):
            flush()
            cur, lang = None, line[3:].strip()
        elif line.startswith("@@ "):
            flush()
            meta, product = line[3:].split(" | ", 1)
            rating, label, *flags = meta.split()
            cur = {"product": product.strip(), "lang": lang, "rating": int(rating),
                   "gold_label": label, "pad": "pad" in flags, "lines": []}
        elif cur is not None:
            cur["lines"].append(line)
    flush()
    return records


def main():
    records = parse(REVIEWS)
    # Sanity checks on the hand-written data.
    assert len(records) == 300, len(records)
    assert len({r["text"] for r in records}) == 300, "duplicate review text"
    for r in records:
        assert r["lang"] in ("en", "zh"), r
        assert r["rating"] in RATINGS_FOR_LABEL[r["gold_label"]], r
        assert r["text"].strip(), r

    random.Random(SEED).shuffle(records)
    with OUT.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, quoting=csv.QUOTE_MINIMAL,
                                lineterminator="\n")
        writer.writeheader()
        for i, r in enumerate(records, start=1):
            writer.writerow({"review_id": f"R{i:04d}", **r})

    print(f"wrote {len(records)} rows to {OUT}")
    print("lang:", dict(Counter(r["lang"] for r in records)))
    print("gold_label:", dict(Counter(r["gold_label"] for r in records)))


if __name__ == "__main__":
    main()
